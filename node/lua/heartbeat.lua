-- heartbeat: extend each attempt's lease if it still holds it (StoreModel.heartbeat).
-- ARGV: n, then per beat: task_id, attempt, node_id, deadline_ms, now_ms.
-- Answers per beat {held 0|1, status or false}.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local p = 2 + (i - 1) * 5
  local id, attempt, node, deadline, now = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3],
    ARGV[p + 4]
  local rec = load(id)
  if not holds(rec, attempt, node) then
    out[i] = { 0, rec and rec.status or false }
  else
    if tonumber(deadline) > tonumber(rec.lease_deadline_ms) then
      put(rec, "lease_deadline_ms", deadline)
      touch(id, rec, now)
    end
    out[i] = { 1, rec.status }
  end
end
return out
