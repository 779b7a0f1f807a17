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
  if not seen[id] then
    seen[id] = true
    local v = state(id)
    if v[1] then -- a task swept since its notification has no fields left
      out[#out + 1] = v
    end
  end
end
return out
