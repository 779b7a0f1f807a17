-- drain: pop up to count_max inbox notifications; answer each task's current state once
-- (StoreModel.drain). ARGV: term, count_max. Answers "fenced" or a list of states, each a
-- list of STATE_FIELDS or, for a snapshot still current, that snapshot's string of them.
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
for _, entry in ipairs(ids) do
  local id, version, seq, packed = entry, nil, nil, nil
  local a = string.find(entry, SEP, 1, true)
  if a then -- a snapshot (see snapshot() in _lib.lua)
    local b = string.find(entry, SEP, a + 1, true)
    local c = string.find(entry, SEP, b + 1, true)
    version, seq = string.sub(entry, 1, a - 1), string.sub(entry, a + 1, b - 1)
    id, packed = string.sub(entry, b + 1, c - 1), string.sub(entry, b + 1)
  end
  if not seen[id] then
    seen[id] = true
    local current = packed and redis.call("HMGET", tkey(id), "version", "seq")
    if current and current[1] == version and current[2] == seq then
      out[#out + 1] = packed -- unchanged since: answered as written (store.py splits it)
    else
      local v = state(id)
      if v[1] then -- a task swept since its notification has no fields left
        out[#out + 1] = v
      end
    end
  end
end
return out
