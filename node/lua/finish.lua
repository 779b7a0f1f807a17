-- finish: running (this attempt, this node) -> succeeded | failed | dead, with result or error
-- (StoreModel.finish). Several independent finishes per call (group commit): each is checked
-- and applied on its own. ARGV: n, ring ("1": ring the bell, "0": the leader is the caller's
-- own node, which wakes it itself), then per finish 9 values: task_id, attempt, node_id,
-- status, failures, run_at_ms, result_json, error_json, now_ms.
-- Answers per finish 1 (written), 0 (refused: not this attempt's) or "!status" (the attempt
-- holds the task but status is not one an attempt can end with: nothing written).
local n = tonumber(ARGV[1])
local ENDS = { succeeded = true, failed = true, dead = true }
local out = {}
local pushed = {}
for i = 1, n do
  local p = 3 + (i - 1) * 9
  local id, attempt, node, status = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]
  local rec = load(id)
  if not holds(rec, attempt, node) then
    out[i] = 0
  elseif not ENDS[status] then
    out[i] = "!status"
  else
    local now = ARGV[p + 8]
    put(rec, "failures", ARGV[p + 4])
    put(rec, "result_json", ARGV[p + 6])
    put(rec, "error", ARGV[p + 7])
    if status == "failed" then
      put(rec, "run_at_ms", ARGV[p + 5])
    end
    end_as(id, rec, status, now)
    pushed[#pushed + 1] = snapshot(state_of(rec))
    out[i] = 1
  end
end
inbox_push(pushed, ARGV[2] == "0")
return out
