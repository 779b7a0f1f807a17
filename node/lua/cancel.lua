-- cancel: any non-terminal task -> cancelled (StoreModel.cancel).
-- ARGV: task_id, now_ms. Answers the task's HGETALL afterwards (empty if unknown).
local id, now = ARGV[1], ARGV[2]
local rec = load(id)
if rec == nil or TERMINAL[rec.status] then
  return rec and redis.call("HGETALL", tkey(id)) or {}
end
local node = rec.status == "running" and rec.lease_node or ""
local attempt = rec.attempt
put(rec, "error", cjson.encode({ kind = "cancelled", type = "Cancelled", message = "cancelled" }))
end_as(id, rec, "cancelled", now)
inbox_push({ id })
if node ~= "" then
  -- Tell the node running it now (which attempt: a later one of the task, retried by hand and
  -- leased to the same node before it reads this, must run on); the refused heartbeat is the
  -- fallback if this is lost.
  redis.call("PUBLISH", B .. ":cancel:" .. node, id .. ":" .. attempt)
end
return redis.call("HGETALL", tkey(id))
