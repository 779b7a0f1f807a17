-- retry: dead or cancelled -> queued, or pending while it still waits on dependencies
-- (StoreModel.retry). ARGV: task_id, now_ms, queued_max (-1 or absent: no limit). Answers the
-- task's HGETALL once retried; "=" and then its HGETALL if it was not dead or cancelled (so a
-- caller that lost a race to retry it knows); empty if unknown; or {"!", backlog} when queued +
-- pending tasks are already at queued_max: the retry would take the backlog past it, as a
-- submission would (nothing written).
local id, now = ARGV[1], ARGV[2]
local queued_max = tonumber(ARGV[3] or "-1")
local rec = load(id)
if rec == nil then
  return {}
end
if rec.status ~= "dead" and rec.status ~= "cancelled" then
  local flat = redis.call("HGETALL", tkey(id))
  table.insert(flat, 1, "=")
  return flat
end
if queued_max >= 0 then
  local backlog = redis.call("ZCARD", skey("queued")) + redis.call("ZCARD", skey("pending"))
  if backlog + 1 > queued_max then
    return { "!", backlog }
  end
end
local to = deps_succeeded(deps_of(rec)) and "queued" or "pending"
set_status(id, rec, to, now)
put(rec, "run_at_ms", "0")
put(rec, "failures", "0")
put(rec, "lease_expiries", "0")
put(rec, "finished_ms", "0")
put(rec, "error", "{}")
touch(id, rec, now)
inbox_push({ id })
return redis.call("HGETALL", tkey(id))
