-- sweep: forget terminal tasks finished at or before the cutoff (now_ms - retention_ms):
-- their hash, every index entry and their idempotency key (StoreModel.sweep). Bounded per call
-- so a large backlog never blocks Redis for long; store.py calls again while more remain.
-- ARGV: cutoff_ms, count_max. Answers the number removed.
local cutoff, count_max = ARGV[1], tonumber(ARGV[2])
local ids = redis.call("ZRANGEBYSCORE", K_DONE, "-inf", cutoff, "LIMIT", 0, count_max)
for _, id in ipairs(ids) do
  local key, status = unpack(redis.call("HMGET", tkey(id), "idempotency_key", "status"))
  if key and key ~= "" then
    redis.call("HDEL", K_IDEM, key)
  end
  if status then
    redis.call("ZREM", skey(status), id)
  end
  redis.call("ZREM", K_ALL, id)
  redis.call("ZREM", K_DONE, id)
  redis.call("DEL", tkey(id))
end
return #ids
