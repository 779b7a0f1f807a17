-- Shared prelude: node/store.py prepends this file to every script before SCRIPT LOAD, so each
-- script stays one self-contained atomic unit (Redis has no script-to-script calls in 6.2).
--
-- KEYS[1] is the key base, e.g. "{ds}": every key below starts with it, so one Redis Cluster
-- slot holds them all and Cluster routes the call by KEYS[1].
--
-- Rule kept by every script: all checks come before the first write, because a Lua error in
-- Redis does not roll back what was already written.
--
-- Numbers: ms timestamps travel as decimal strings and are stored as received. Lua numbers are
-- doubles and tostring() switches to exponent notation past 1e14, so scripts only compare
-- tonumber() values (exact below 2^53) and never format a timestamp they computed.

local B = KEYS[1]
local K_SEQ = B .. ":seq"
local K_EPOCH = B .. ":epoch"
local K_INBOX = B .. ":inbox"
local K_IDEM = B .. ":idem"
local K_ALL = B .. ":all"
local K_DONE = B .. ":done"
local K_QN = B .. ":qn"
local K_BELL = B .. ":bell"

local TERMINAL = { succeeded = true, dead = true, cancelled = true }

-- The fields of TaskState, in the order store.py's _state() reads them.
local STATE_FIELDS = {
  "id", "type", "priority", "seq", "status", "attempt", "run_at_ms", "depends_on",
  "lease_node", "lease_deadline_ms", "failures", "lease_expiries", "version",
}

-- Fields a task hash leaves out while they hold their default (submit writes none of them:
-- fewer fields make the submit's HSET and the hash much cheaper). Every read fills them in:
-- load() and state() here, store.py's _record() for HGETALL answers. A writer may store a
-- default or leave it out; readers cannot tell. (Also result_json "" and error "{}", which
-- no script reads.)
local DEFAULTS = {
  attempt = "0", failures = "0", lease_expiries = "0", started_ms = "0", finished_ms = "0",
  lease_node = "", lease_deadline_ms = "0", depends_on = "[]", idempotency_key = "",
}
-- The STATE_FIELDS that may be missing, by index, with their defaults.
-- Written out, not derived: this prelude runs at every script call, and the loop that derived
-- it cost about 1% of a leader round's instructions. test_store.py checks it against
-- STATE_FIELDS and DEFAULTS.
local STATE_DEFAULTS = { { 6, "0" }, { 8, "[]" }, { 9, "" }, { 10, "0" }, { 11, "0" }, { 12, "0" } }

local function tkey(id)
  return B .. ":t:" .. id
end

local function skey(status)
  return B .. ":s:" .. status
end

local function akey(node)
  return B .. ":a:" .. node
end

-- The tasks that name this one in depends_on (a SET): the sweep keeps a task that a live task
-- still waits on, whatever its retention says.
local function rdkey(id)
  return B .. ":rd:" .. id
end

-- term < stored epoch: a deposed leader's write.
local function fenced(term)
  local epoch = redis.call("GET", K_EPOCH)
  return epoch and tonumber(term) < tonumber(epoch)
end

-- The task's fields the scripts read (STATE_FIELDS, not the payload), or nil if it does not
-- exist. Writes to it are staged with put() and sent as one HSET by flush() (touch() flushes):
-- one command per operation instead of one per field, which is most of a script's cost.
local function load(id)
  local v = redis.call("HMGET", tkey(id), unpack(STATE_FIELDS))
  if not v[1] then
    return nil
  end
  local rec = { _w = {} }
  for i, f in ipairs(STATE_FIELDS) do
    rec[f] = v[i] or DEFAULTS[f]
  end
  return rec
end

local function put(rec, field, value)
  rec[field] = value
  local w = rec._w
  w[#w + 1] = field
  w[#w + 1] = value
end

local function flush(id, rec)
  if #rec._w > 0 then
    redis.call("HSET", tkey(id), unpack(rec._w))
    rec._w = {}
  end
end

-- A task's state as _state() reads it, defaults filled in; v[1] is false if it does not exist.
local function state(id)
  local v = redis.call("HMGET", tkey(id), unpack(STATE_FIELDS))
  if v[1] then
    for _, d in ipairs(STATE_DEFAULTS) do
      if not v[d[1]] then
        v[d[1]] = d[2]
      end
    end
  end
  return v
end

-- state() of a loaded record, without reading the hash again (every field it holds is current:
-- the scripts change them only through put()).
local function state_of(rec)
  local out = {}
  for i, f in ipairs(STATE_FIELDS) do
    out[i] = rec[f]
  end
  return out
end

-- Integers stored as decimal text (HINCRBY's form), computed without a command.
local function incr(rec, field)
  local n = tonumber(rec[field]) + 1
  put(rec, field, string.format("%d", n))
  return n
end

local function touch(id, rec, now)
  put(rec, "updated_ms", now)
  incr(rec, "version")
  flush(id, rec)
end

-- Move a task between statuses, keeping every index in the same step: the per-status ZSETs
-- (scored by seq), the queued-per-priority counters and the retention ZSET of terminal tasks.
local function set_status(id, rec, to, now)
  local from = rec.status
  if from == to then
    return
  end
  redis.call("ZREM", skey(from), id)
  redis.call("ZADD", skey(to), rec.seq, id)
  if from == "queued" then
    redis.call("HINCRBY", K_QN, rec.priority, -1)
  end
  if to == "queued" then
    redis.call("HINCRBY", K_QN, rec.priority, 1)
  end
  if TERMINAL[from] and not TERMINAL[to] then
    redis.call("ZREM", K_DONE, id)
  end
  put(rec, "status", to)
end

-- TaskRecord.end(): leave the lease, stamp finished_ms if terminal, touch.
local function end_as(id, rec, to, now)
  set_status(id, rec, to, now)
  put(rec, "lease_node", "")
  put(rec, "lease_deadline_ms", "0")
  if TERMINAL[to] then
    put(rec, "finished_ms", now)
    redis.call("ZADD", K_DONE, now, id)
  end
  touch(id, rec, now)
end

-- StoreModel._holds: this attempt of this node still owns the running task.
local function holds(rec, attempt, node)
  return rec ~= nil and rec.status == "running" and tonumber(rec.attempt) == tonumber(attempt)
    and rec.lease_node == node
end

local function deps_of(rec)
  return cjson.decode(rec.depends_on)
end

-- Every dependency exists and succeeded (StoreModel's readiness test for submit and retry).
local function deps_succeeded(deps)
  for _, dep in ipairs(deps) do
    if redis.call("HGET", tkey(dep), "status") ~= "succeeded" then
      return false
    end
  end
  return true
end

-- Inbox entries are task ids, or snapshots of a task's state as a script wrote it:
-- "version SEP seq SEP state..." (the 13 STATE_FIELDS joined by SEP). drain answers a snapshot
-- as it stands while the task's version and seq are unchanged, without reading the hash: every
-- write to a task bumps its version (touch), and seq tells a re-created id from the old task.
local SEP = "\31"

-- The snapshot entry of a state (a list in STATE_FIELDS order, all strings), or its id alone
-- if a field that a client or operator chose holds the separator.
local function snapshot(v)
  if string.find(v[1], SEP, 1, true) or string.find(v[2], SEP, 1, true)
    or string.find(v[8], SEP, 1, true) or string.find(v[9], SEP, 1, true) then
    return v[1]
  end
  return v[13] .. SEP .. v[4] .. SEP .. table.concat(v, SEP)
end

-- Lua's unpack() is bounded by the C stack (~8000 values): push in slices.
local UNPACK_MAX = 1000

-- quiet: the caller is the leader's own node and wakes its leader in-process, so the bell
-- (one message to every subscriber) would only cost a wake-up.
local function inbox_push(ids, quiet)
  if #ids == 0 then
    return
  end
  for i = 1, #ids, UNPACK_MAX do
    redis.call("RPUSH", K_INBOX, unpack(ids, i, math.min(i + UNPACK_MAX - 1, #ids)))
  end
  -- One ring per script: the leader drains everything pending when woken.
  if not quiet then
    redis.call("PUBLISH", K_BELL, #ids)
  end
end
