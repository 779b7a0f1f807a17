-- take: pop this node's next assignments that are still current; stale ones are dropped
-- (StoreModel.take_many). ARGV: node_id, count_max. Answers a list of {attempt, HGETALL...},
-- at most count_max of them, possibly empty.
-- With ARGV[2] = "check", ARGV[1] is instead one already-popped entry "id:attempt" plus ARGV[3]
-- the node: BLPOP pops outside a script, and this judges what it popped, without a write.
-- Answers {attempt, HGETALL...} or an empty list.
local function current(entry, node)
  local id, attempt = string.match(entry, "^(.*):(%d+)$")
  if id == nil then
    return nil
  end
  local flat = redis.call("HGETALL", tkey(id))
  if #flat == 0 then
    return nil
  end
  local rec = {}
  for i = 1, #flat, 2 do
    rec[flat[i]] = flat[i + 1]
  end
  if holds(rec, attempt, node) then
    local out = { attempt }
    for i = 1, #flat do
      out[i + 1] = flat[i]
    end
    return out
  end
  return nil
end

if ARGV[2] == "check" then
  return current(ARGV[1], ARGV[3]) or {}
end
local node, count_max = ARGV[1], tonumber(ARGV[2])
local out = {}
while #out < count_max do
  local entry = redis.call("LPOP", akey(node))
  if not entry then
    break
  end
  local got = current(entry, node)
  if got then
    out[#out + 1] = got
  end
end
return out
