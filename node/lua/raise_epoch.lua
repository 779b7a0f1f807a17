-- raise_epoch: store the leader's term as the fencing epoch unless a newer one is stored.
-- ARGV: term. Answers 1 (stored or equal) or 0 (refused: a newer leader exists).
local term = ARGV[1]
if fenced(term) then
  return 0
end
redis.call("SET", K_EPOCH, term)
return 1
