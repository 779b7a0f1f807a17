-- raise_epoch: store the leader's term as the fencing epoch unless a newer one is stored, or
-- the same term is held by another leader (Raft state is in memory: a member restarted fast
-- enough can vote twice in a term, so two leaders can share one; the first to raise keeps it).
-- ARGV: term, holder. Answers 1 (stored, or equal and ours) or 0 (refused).
local term = ARGV[1]
local holder = ARGV[2] or ""
if fenced(term) then
  return 0
end
local epoch = redis.call("GET", K_EPOCH)
if epoch and tonumber(epoch) == tonumber(term) and holder ~= "" then
  local held = redis.call("GET", K_EPOCH .. ":holder")
  if held and held ~= "" and held ~= holder then
    return 0
  end
end
redis.call("SET", K_EPOCH, term)
redis.call("SET", K_EPOCH .. ":holder", holder)
return 1
