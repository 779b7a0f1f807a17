-- take: pop this node's next assignment that is still current; stale ones are dropped
-- (StoreModel.take). ARGV: node_id. Answers {attempt, HGETALL...} or an empty list.
-- With ARGV[2] = "check", ARGV[1] is instead one already-popped entry "id:attempt" plus ARGV[3]
-- the node: BLPOP pops outside a script, and this judges what it popped, without a write.
local function current(entry, node)
  local id, attempt = string.match(entry, "^(.*):(%d+)$")
  if id == nil then
    return nil
  end
  local rec = load(id)
  if holds(rec, attempt, node) then
    local out = { attempt }
    local flat = redis.call("HGETALL", tkey(id))
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
local node = ARGV[1]
while true do
  local entry = redis.call("LPOP", akey(node))
  if not entry then
    return {}
  end
  local got = current(entry, node)
  if got then
    return got
  end
end
