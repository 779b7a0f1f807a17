-- release: running (this attempt, this node) -> queued: the node gives the task back unrun
-- (StoreModel.release). ARGV: task_id, attempt, node_id, now_ms. Answers 1 or 0.
local id, attempt, node, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rec = load(id)
if not holds(rec, attempt, node) then
  return 0
end
end_as(id, rec, "queued", now)
inbox_push({ id })
return 1
