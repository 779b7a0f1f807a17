-- apply: the leader's batch of Lease / Expire / Promote, in order, each fenced by its term
-- (StoreModel.lease / expire / promote). One script: one round trip, one atomic step.
-- ARGV: n, then per op 6 values: kind, term, task_id, x, y, z where
--   kind "L": x node_id, y deadline_ms, z now_ms
--   kind "E": x attempt, y now_ms, z target
--   kind "P": x now_ms
-- After the ops, ARGV[2 + n * 6] (optional) is the direct node: the caller's own node, whose
-- leases skip its assignment list because the caller starts them itself (StoreModel.apply).
-- Answers one entry per op: "fenced", false (unknown task), the task's state, or, for a lease
-- to the direct node that took effect, {"+", state, {EXTRA_FIELDS...}}. A state has 13
-- entries, so two- and three-entry answers are markers whatever a task id may be. An Expire
-- with a target other than queued or dead (a caller bug) ends the batch with {"!target", index0}
-- as its last entry: the ops before it were applied, as in the model, which raises there.
-- What a direct lease answers beside its state: the rest of the task's fields, in the order
-- store.py's _direct_record() reads them (a missing one holds its default there).
local EXTRA_FIELDS = {
  "payload_json", "max_retries", "backoff_base_ms", "backoff_cap_ms", "timeout_ms",
  "idempotency_key", "created_ms", "updated_ms", "started_ms", "finished_ms", "result_json",
  "error",
}
local n = tonumber(ARGV[1])
local direct = ARGV[2 + n * 6] or ""
local out = {}

-- load() for a lease to the direct node, whose answer carries every field: one HGETALL
-- reads them all, where load()'s HMGET and a second one for EXTRA_FIELDS would search the hash
-- once per field.
local function load_all(id)
  local flat = redis.call("HGETALL", tkey(id))
  if #flat == 0 then
    return nil
  end
  local rec = { _w = {} }
  for i = 1, #flat, 2 do
    rec[flat[i]] = flat[i + 1]
  end
  for f, d in pairs(DEFAULTS) do
    if rec[f] == nil then
      rec[f] = d
    end
  end
  return rec
end

local function lease(id, node, deadline, now)
  local is_direct = direct ~= "" and node == direct
  local rec
  if is_direct then
    rec = load_all(id)
  else
    rec = load(id)
  end
  if rec == nil then
    return false
  end
  if rec.status == "queued" then
    set_status(id, rec, "running", now)
    local attempt = incr(rec, "attempt")
    put(rec, "lease_node", node)
    put(rec, "lease_deadline_ms", deadline)
    put(rec, "started_ms", now)
    touch(id, rec, now)
    if is_direct then
      local extra = {}
      for i, f in ipairs(EXTRA_FIELDS) do
        extra[i] = rec[f] or false -- as HMGET answers a field the hash leaves out
      end
      return { "+", state_of(rec), extra }
    end
    -- The assignment is queued in the same step as the lease: durable before anyone is told.
    redis.call("RPUSH", akey(node), id .. ":" .. string.format("%d", attempt))
  end
  return state_of(rec)
end

local function expire(id, attempt, now, target)
  local rec = load(id)
  if rec == nil then
    return false
  end
  if rec.status == "running" and tonumber(rec.attempt) == tonumber(attempt)
    and tonumber(rec.lease_deadline_ms) <= tonumber(now) then
    local expiries = incr(rec, "lease_expiries")
    if target == "dead" then
      put(rec, "error", cjson.encode({
        kind = "lease_expired", type = "LeaseExpired",
        message = "lease lost " .. string.format("%d", expiries) .. " times (worker or node lost)",
      }))
    end
    end_as(id, rec, target, now)
  end
  return state_of(rec)
end

local function promote(id, now)
  local rec = load(id)
  if rec == nil then
    return false
  end
  if rec.status ~= "pending" and rec.status ~= "failed" then
    return state_of(rec)
  end
  local blocked = false
  for _, dep in ipairs(deps_of(rec)) do
    local dep_status = redis.call("HGET", tkey(dep), "status")
    if not dep_status or dep_status == "dead" or dep_status == "cancelled" then
      local why = dep_status and ("is " .. dep_status) or "no longer exists"
      put(rec, "error", cjson.encode({
        kind = "dependency", type = "DependencyFailed",
        message = "dependency " .. dep .. " " .. why,
      }))
      end_as(id, rec, "dead", now)
      return state_of(rec)
    end
    if dep_status ~= "succeeded" then
      blocked = true
    end
  end
  if not blocked and tonumber(rec.run_at_ms) <= tonumber(now) then
    set_status(id, rec, "queued", now)
    touch(id, rec, now)
  end
  return state_of(rec)
end

local KINDS = { L = true, E = true, P = true }
for i = 1, n do
  if not KINDS[ARGV[2 + (i - 1) * 6]] then
    return redis.error_reply("apply: unknown op kind in op " .. i)
  end
end

-- fenced() per distinct term, not per op: no op here raises the epoch.
local fenced_by_term = {}
for i = 1, n do
  local p = 2 + (i - 1) * 6
  local kind, term, id = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local x, y, z = ARGV[p + 3], ARGV[p + 4], ARGV[p + 5]
  local is_fenced = fenced_by_term[term]
  if is_fenced == nil then
    is_fenced = fenced(term) and true or false
    fenced_by_term[term] = is_fenced
  end
  if is_fenced then
    out[i] = "fenced"
  elseif kind == "L" then
    out[i] = lease(id, x, y, z)
  elseif kind == "E" then
    if z ~= "queued" and z ~= "dead" then
      out[i] = { "!target", i - 1 }
      return out
    end
    out[i] = expire(id, x, y, z)
  else
    out[i] = promote(id, x)
  end
end
return out
