-- submit: create every task of one batch, or none (StoreModel.submit).
-- ARGV: now_ms, n, then per task: id, type, payload_json, priority, max_retries,
--   backoff_base_ms, backoff_cap_ms, timeout_ms, run_at_ms, idempotency_key, depends_on_json,
--   ndeps, dep_1 .. dep_ndeps
-- Answers {"!", field, index0, value} for a refused batch (nothing written), else
-- {"ok", item...} with item {"+", seq, status} for a created task and {"=", HGETALL...} where an
-- idempotency key matched an earlier task.
local now = ARGV[1]
local n = tonumber(ARGV[2])
local items = {}
local pos = 3
for i = 1, n do
  local ndeps = tonumber(ARGV[pos + 11])
  local deps = {}
  for d = 1, ndeps do
    deps[d] = ARGV[pos + 11 + d]
  end
  items[i] = {
    id = ARGV[pos], type = ARGV[pos + 1], payload_json = ARGV[pos + 2],
    priority = ARGV[pos + 3], max_retries = ARGV[pos + 4], backoff_base_ms = ARGV[pos + 5],
    backoff_cap_ms = ARGV[pos + 6], timeout_ms = ARGV[pos + 7], run_at_ms = ARGV[pos + 8],
    key = ARGV[pos + 9], depends_on = ARGV[pos + 10], deps = deps,
  }
  pos = pos + 12 + ndeps
end

-- Checks, in the model's order: the first offending task names the error.
local batch_ids = {}
local batch_keys = {}
for i, it in ipairs(items) do
  local known = it.key ~= "" and (batch_keys[it.key] or redis.call("HEXISTS", K_IDEM, it.key) == 1)
  if not known then
    if batch_ids[it.id] or redis.call("EXISTS", tkey(it.id)) == 1 then
      return { "!", "id", i - 1, it.id }
    end
    for _, dep in ipairs(it.deps) do
      if not batch_ids[dep] and redis.call("EXISTS", tkey(dep)) == 0 then
        return { "!", "depends_on", i - 1, dep }
      end
    end
    batch_ids[it.id] = true
    if it.key ~= "" then
      batch_keys[it.key] = true
    end
  end
end

-- Writes.
local out = { "ok" }
local pushed = {}
local queued = {}
for _, it in ipairs(items) do
  local existing = it.key ~= "" and redis.call("HGET", K_IDEM, it.key)
  if existing then
    out[#out + 1] = { "=", unpack(redis.call("HGETALL", tkey(existing))) }
  else
    local seq = redis.call("INCR", K_SEQ)
    local status = "pending"
    if tonumber(it.run_at_ms) <= tonumber(now) and deps_succeeded(it.deps) then
      status = "queued"
    end
    redis.call("HSET", tkey(it.id),
      "id", it.id, "type", it.type, "payload_json", it.payload_json,
      "priority", it.priority, "seq", seq, "status", status,
      "max_retries", it.max_retries, "backoff_base_ms", it.backoff_base_ms,
      "backoff_cap_ms", it.backoff_cap_ms, "timeout_ms", it.timeout_ms,
      "run_at_ms", it.run_at_ms, "depends_on", it.depends_on,
      "idempotency_key", it.key, "created_ms", now, "updated_ms", now,
      "attempt", 0, "failures", 0, "lease_expiries", 0, "started_ms", 0, "finished_ms", 0,
      "lease_node", "", "lease_deadline_ms", 0, "result_json", "", "error", "{}",
      "version", 1)
    redis.call("ZADD", K_ALL, seq, it.id)
    redis.call("ZADD", skey(status), seq, it.id)
    if status == "queued" then
      queued[it.priority] = (queued[it.priority] or 0) + 1
    end
    if it.key ~= "" then
      redis.call("HSET", K_IDEM, it.key, it.id)
    end
    for _, dep in ipairs(it.deps) do
      redis.call("SADD", rdkey(dep), it.id)
    end
    pushed[#pushed + 1] = it.id
    out[#out + 1] = { "+", seq, status }
  end
end
for priority, n in pairs(queued) do
  redis.call("HINCRBY", K_QN, priority, n)
end
inbox_push(pushed)
return out
