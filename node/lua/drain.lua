-- drain: pop up to count_max inbox notifications; answer each task's current state once
-- (StoreModel.drain). ARGV: term, count_max. Answers "fenced" or a list of states.
local term, count_max = ARGV[1], tonumber(ARGV[2])
if fenced(term) then
  return "fenced"
end
local out = {}
if count_max <= 0 then
  return out
end
local ids = redis.call("LPOP", K_INBOX, count_max)
if not ids then
  return out
end
local seen = {}
for _, id in ipairs(ids) do
  if not seen[id] and redis.call("EXISTS", tkey(id)) == 1 then
    seen[id] = true
    out[#out + 1] = state(id)
  end
end
return out
