-- sweep: forget terminal tasks finished at or before the cutoff (now_ms - retention_ms):
-- their hash, every index entry and their idempotency key (StoreModel.sweep), except those a
-- live task still depends on (held: swept once no live dependant waits on them). Bounded per
-- call so a large backlog never blocks Redis for long; store.py calls again while more remain,
-- skipping the held ones by offset.
-- ARGV: cutoff_ms, count_max, offset. Answers {removed, held} of the entries it looked at.
local cutoff, count_max, offset = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or "0")
local ids = redis.call("ZRANGEBYSCORE", K_DONE, "-inf", cutoff, "LIMIT", offset, count_max)

local function held(id)
  for _, dependant in ipairs(redis.call("SMEMBERS", rdkey(id))) do
    local status = redis.call("HGET", tkey(dependant), "status")
    if status and not TERMINAL[status] then
      return true
    end
  end
  return false
end

local removed, kept = 0, 0
for _, id in ipairs(ids) do
  if held(id) then
    kept = kept + 1
  else
    local key, status, deps = unpack(redis.call("HMGET", tkey(id), "idempotency_key", "status",
      "depends_on"))
    if key and key ~= "" then
      redis.call("HDEL", K_IDEM, key)
    end
    if status then
      redis.call("ZREM", skey(status), id)
    end
    if deps and deps ~= "[]" then
      for _, dep in ipairs(cjson.decode(deps)) do
        redis.call("SREM", rdkey(dep), id)
      end
    end
    redis.call("ZREM", K_ALL, id)
    redis.call("ZREM", K_DONE, id)
    redis.call("DEL", tkey(id), rdkey(id))
    removed = removed + 1
  end
end
return { removed, kept }
