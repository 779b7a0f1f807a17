-- submit: one or more calls (a group commit), each creating every task of its batch or none
-- (StoreModel.submit). The calls run in order, each as if it were its own script: a later call
-- sees what an earlier one wrote (its idempotency keys, its tasks), and a refused call writes
-- nothing and leaves the others be.
--
-- ARGV[1]: JSON [[now_ms, [task, ...], queued_max], ...] with task = [id, type, payload_json,
--   priority, max_retries, backoff_base_ms, backoff_cap_ms, timeout_ms, run_at_ms,
--   idempotency_key, depends_on_json, definition]. queued_max: a call whose new tasks would
--   take the queued + pending tasks past it is refused (-1: no limit). definition: the
--   fingerprint of the task's definition (core.store_model.definition_fingerprint) when it has
--   a key, stored as its hash's "idem_def": a resend of the key must bring the same one. One
--   argument per script rather than a dozen per task: packing thousands of arguments was the
--   costliest part of a batch on the node, and cjson decodes in C. Numbers are integers below
--   2^53 (validation bounds them), which cjson keeps exact; text() below writes them as
--   digits. depends_on_json is stored as sent ("[]" when empty).
--
-- ARGV[2]: "quiet" to push to the inbox without ringing the bell (store.py sends it on every
--   script of a pipelined flush but the last, and on all when the submitting node leads).
--
-- Answers one reply per call, in order: {"!", field, index0, value} for a refused call (nothing
-- of it written; {"!", "idempotency_key", index0, key, earlier_id} for a key that stands for a
-- task of another definition, {"!", "backlog", created, backlog} for a call over its
-- queued_max), else {"ok", first_seq, codes, HGETALL...}: codes has one letter per task, "q"
-- (created queued), "p" (created pending) or "=" (its idempotency key matched an earlier task
-- of the same definition, whose HGETALL follows, in order); created tasks take the sequence
-- numbers first_seq, first_seq + 1, ... in order.
local calls = cjson.decode(ARGV[1])
local EMPTY = {}

-- A number as redis.call would format it (%.17g: exact digits for the integers we get), once
-- per distinct value: a batch repeats its priorities, timeouts and retry counts, and turning
-- numbers into strings was a sixth of the script's time.
local TEXT = {}
local function text(v)
  local s = TEXT[v]
  if not s then
    s = type(v) == "string" and v or string.format("%.17g", v)
    TEXT[v] = s
  end
  return s
end

-- HMGET and EXISTS over any number of arguments, in slices unpack() can take.
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, UNPACK_MAX do
    local got = redis.call("HMGET", key, unpack(fields, i, math.min(i + UNPACK_MAX - 1, #fields)))
    for j = 1, #got do
      out[#out + 1] = got[j]
    end
  end
  return out
end

local function exists_count(keys)
  local n = 0
  for i = 1, #keys, UNPACK_MAX do
    n = n + redis.call("EXISTS", unpack(keys, i, math.min(i + UNPACK_MAX - 1, #keys)))
  end
  return n
end

-- The model's checks, item by item in order: the first offender names the error. Only run when
-- the bulk checks below found something to name (or could not rule it out). ``idem`` answers
-- the task id an idempotency key already stands for (stored before this script or made by an
-- earlier call in it), ``conflict`` whether a task's key stands for another definition;
-- existence is read from Redis, which holds the earlier calls' writes.
local function first_offender(tasks, idem, conflict)
  local batch_ids = {}
  local batch_keys = {}
  for i, t in ipairs(tasks) do
    local id, key = t[1], t[10]
    local known = key ~= "" and (batch_keys[key] or idem(key))
    if known then
      local earlier_id = conflict(t, batch_keys)
      if earlier_id then
        return { "!", "idempotency_key", i - 1, key, earlier_id }
      end
    else
      if batch_ids[id] or redis.call("EXISTS", tkey(id)) == 1 then
        return { "!", "id", i - 1, id }
      end
      for _, dep in ipairs(t.deps) do
        if not batch_ids[dep] and redis.call("EXISTS", tkey(dep)) == 0 then
          return { "!", "depends_on", i - 1, dep }
        end
      end
      batch_ids[id] = true
      if key ~= "" then
        batch_keys[key] = t
      end
    end
  end
  return nil
end

-- Once for the whole flush, before any write: whether any task id of any call already exists
-- (ids are made by the server, so this is almost always none, and then only this script's own
-- calls can have made an id since), and which idempotency keys are stored.
local all_ids = {}
local all_keys = {}
local tasks_total = 0
local limited = false
for _, call in ipairs(calls) do
  tasks_total = tasks_total + #call[2]
  if call[3] and call[3] >= 0 then
    limited = true
  end
  for _, t in ipairs(call[2]) do
    all_ids[#all_ids + 1] = tkey(t[1])
    if t[10] ~= "" then
      all_keys[#all_keys + 1] = t[10]
    end
  end
end
local ids_existed = exists_count(all_ids) ~= 0
local stored_idem = {}
if #all_keys > 0 then
  local ids = hmget_all(K_IDEM, all_keys)
  for i, key in ipairs(all_keys) do
    if ids[i] then
      stored_idem[key] = ids[i]
    end
  end
end
-- Sequence numbers: the first call that creates anything reserves one per task of the flush
-- (one INCRBY rather than one per call), and the unused rest is given back at the end. Should
-- the script fail in between, the counter is ahead (gaps), never behind (duplicates).
local seq_next = nil
local seq_reserved_last = nil

-- The live backlog (queued + pending) before this script: its own status ZSET entries are
-- written at the end, so the ZSETs hold the state before it throughout; made_live counts
-- the tasks its accepted calls created (all queued or pending).
local backlog_before = 0
if limited then
  backlog_before = redis.call("ZCARD", skey("queued")) + redis.call("ZCARD", skey("pending"))
end
local made_live = 0

-- What this script's calls made so far: key -> id, key -> definition, and id -> true.
local made_keys = {}
local made_defs = {}
local made_ids = {}
local function idem(key)
  return stored_idem[key] or made_keys[key]
end

-- The definition an idempotency key stands for, from a stored task (read once per key; ""
-- for a task stored before definitions were: it matches anything, as every resend used to).
local stored_defs = {}
local function stored_def(key)
  local d = stored_defs[key]
  if d == nil then
    d = redis.call("HGET", tkey(stored_idem[key]), "idem_def") or ""
    stored_defs[key] = d
  end
  return d
end

-- For a task whose key is known (earlier in its batch, made by an earlier call, or stored):
-- the id of the task the key stands for if that task's definition differs, else nil.
local function conflict(t, batch_keys)
  local key = t[10]
  local earlier = batch_keys[key]
  local earlier_id, def
  if earlier then
    earlier_id, def = earlier[1], earlier[12]
  elseif made_keys[key] then
    earlier_id, def = made_keys[key], made_defs[key]
  else
    earlier_id, def = stored_idem[key], stored_def(key)
  end
  if def ~= "" and def ~= t[12] then
    return earlier_id
  end
  return nil
end

-- The end of a new task's snapshot: lease_node "", lease_deadline_ms, failures,
-- lease_expiries 0, version 1.
local FRESH_TAIL = SEP .. SEP .. "0" .. SEP .. "0" .. SEP .. "0" .. SEP .. "1"

-- Index writes, gathered over every call and sent at the end (no check reads them).
local queued = {}
local pushed = {}
local all = {}
local by_status = { queued = {}, pending = {} }
local idem_new = {}
local out = {}

for c, call in ipairs(calls) do
  local now, tasks = text(call[1]), call[2]

  -- Checks (all before any write of this call): the ids of the tasks to create must not
  -- exist, every dependency not made earlier in this call must exist. Anything the bulk
  -- answers cannot settle goes to the exact item-by-item pass.
  local batch_ids = {}
  local batch_keys = {}
  local dep_keys = {}
  local doubt = ids_existed
  local created = 0
  for _, t in ipairs(tasks) do
    local id, key = t[1], t[10]
    t.deps = t[11] == "[]" and EMPTY or cjson.decode(t[11])
    local known = key ~= "" and (batch_keys[key] or idem(key))
    if known then
      if conflict(t, batch_keys) then
        doubt = true
      end
    else
      if batch_ids[id] or made_ids[id] then
        doubt = true
      end
      for _, dep in ipairs(t.deps) do
        if not batch_ids[dep] then
          dep_keys[#dep_keys + 1] = tkey(dep)
        end
      end
      batch_ids[id] = true
      if key ~= "" then
        batch_keys[key] = t
      end
      created = created + 1
    end
  end
  local refused = nil
  if doubt or exists_count(dep_keys) ~= #dep_keys then
    refused = first_offender(tasks, idem, conflict)
  end
  -- The backlog limit, once the tasks themselves are fine (a refusal that says what to fix
  -- comes before one that says "later").
  local queued_max = call[3] or -1
  if not refused and queued_max >= 0 and created > 0
    and backlog_before + made_live + created > queued_max then
    refused = { "!", "backlog", created, backlog_before + made_live }
  end

  if refused then
    out[c] = refused
  else
    -- Writes.
    if created > 0 and not seq_next then
      seq_reserved_last = redis.call("INCRBY", K_SEQ, tasks_total)
      seq_next = seq_reserved_last - tasks_total
    end
    made_live = made_live + created
    local seq = seq_next or 0
    local codes = {}
    local answer = { "ok", seq + 1, "" }
    for i, t in ipairs(tasks) do
      local id, key = t[1], t[10]
      local existing = key ~= "" and idem(key)
      if existing then
        codes[i] = "="
        answer[#answer + 1] = redis.call("HGETALL", tkey(existing))
      else
        seq = seq + 1
        local seq_text = string.format("%.17g", seq)
        local status = "pending"
        if tonumber(t[9]) <= tonumber(now) and deps_succeeded(t.deps) then
          status = "queued"
        end
        local priority = text(t[4])
        -- Only fields that do not hold their default (DEFAULTS in _lib.lua: attempt,
        -- failures, leases, times, result and error are all at theirs now), in one HSET:
        -- half the fields of the full record, which made this HSET most of the script's time.
        if key == "" and t[11] == "[]" then
          redis.call("HSET", tkey(id),
            "id", id, "type", t[2], "payload_json", t[3],
            "priority", priority, "seq", seq_text, "status", status,
            "max_retries", text(t[5]), "backoff_base_ms", text(t[6]),
            "backoff_cap_ms", text(t[7]), "timeout_ms", text(t[8]),
            "run_at_ms", text(t[9]), "created_ms", now, "updated_ms", now, "version", "1")
        else
          local fields = {
            "id", id, "type", t[2], "payload_json", t[3],
            "priority", priority, "seq", seq_text, "status", status,
            "max_retries", text(t[5]), "backoff_base_ms", text(t[6]),
            "backoff_cap_ms", text(t[7]), "timeout_ms", text(t[8]),
            "run_at_ms", text(t[9]), "created_ms", now, "updated_ms", now, "version", "1",
          }
          if t[11] ~= "[]" then
            fields[#fields + 1] = "depends_on"
            fields[#fields + 1] = t[11]
          end
          if key ~= "" then
            fields[#fields + 1] = "idempotency_key"
            fields[#fields + 1] = key
            fields[#fields + 1] = "idem_def"
            fields[#fields + 1] = t[12]
          end
          redis.call("HSET", tkey(id), unpack(fields))
        end
        made_ids[id] = true
        all[#all + 1] = seq_text
        all[#all + 1] = id
        local list = by_status[status]
        list[#list + 1] = seq_text
        list[#list + 1] = id
        if status == "queued" then
          queued[priority] = (queued[priority] or 0) + 1
          codes[i] = "q"
        else
          codes[i] = "p"
        end
        if key ~= "" then
          made_keys[key] = id
          made_defs[key] = t[12]
          idem_new[#idem_new + 1] = key
          idem_new[#idem_new + 1] = id
        end
        for _, dep in ipairs(t.deps) do
          redis.call("SADD", rdkey(dep), id)
        end
        -- snapshot() of the new state, spelled out: the one concatenation costs less here.
        if string.find(id, SEP, 1, true) or string.find(t[2], SEP, 1, true)
          or string.find(t[11], SEP, 1, true) then
          pushed[#pushed + 1] = id
        else
          pushed[#pushed + 1] = "1" .. SEP .. seq_text .. SEP .. id .. SEP .. t[2] .. SEP
            .. priority .. SEP .. seq_text .. SEP .. status .. SEP .. "0" .. SEP .. text(t[9])
            .. SEP .. t[11] .. FRESH_TAIL
        end
      end
    end
    seq_next = seq_next and seq
    answer[3] = table.concat(codes)
    out[c] = answer
  end
end

if seq_next and seq_next < seq_reserved_last then
  redis.call("DECRBY", K_SEQ, seq_reserved_last - seq_next)
end

-- Index entries in bulk (pairs: slices of an even length).
for i = 1, #all, UNPACK_MAX do
  redis.call("ZADD", K_ALL, unpack(all, i, math.min(i + UNPACK_MAX - 1, #all)))
end
for status, list in pairs(by_status) do
  for i = 1, #list, UNPACK_MAX do
    redis.call("ZADD", skey(status), unpack(list, i, math.min(i + UNPACK_MAX - 1, #list)))
  end
end
for i = 1, #idem_new, UNPACK_MAX do
  redis.call("HSET", K_IDEM, unpack(idem_new, i, math.min(i + UNPACK_MAX - 1, #idem_new)))
end
for priority, count in pairs(queued) do
  redis.call("HINCRBY", K_QN, priority, count)
end
-- quiet: a later script of the same pipeline rings the bell for this one's tasks too (one
-- leader wake-up per flush, not per script).
inbox_push(pushed, ARGV[2] == "quiet")
return out
