-- retry: dead or cancelled -> queued, or pending while it still waits on dependencies
-- (StoreModel.retry). ARGV: task_id, now_ms. Answers the task's HGETALL (empty if unknown).
local id, now = ARGV[1], ARGV[2]
local rec = load(id)
if rec == nil or (rec.status ~= "dead" and rec.status ~= "cancelled") then
  return rec and redis.call("HGETALL", tkey(id)) or {}
end
local to = deps_succeeded(deps_of(rec)) and "queued" or "pending"
set_status(id, rec, to, now)
redis.call("HSET", tkey(id), "run_at_ms", "0", "failures", "0", "lease_expiries", "0",
  "finished_ms", "0", "error", "{}")
touch(id, rec, now)
inbox_push({ id })
return redis.call("HGETALL", tkey(id))
