-- live_states: non-terminal tasks with seq > after_seq, in seq order, at most count_max (all
-- if negative): a new leader's rebuild reads them chunk by chunk (StoreModel.live_states).
-- ARGV: after_seq, count_max. Answers a list of states.
local after, count_max = ARGV[1], tonumber(ARGV[2])
local LIVE = { "pending", "queued", "running", "failed" }
-- Each status ZSET is scored by seq: take the first count_max of each, merge, keep count_max.
local merged = {}
for _, status in ipairs(LIVE) do
  local flat
  if count_max >= 0 then
    flat = redis.call("ZRANGEBYSCORE", skey(status), "(" .. after, "+inf", "WITHSCORES",
      "LIMIT", 0, count_max)
  else
    flat = redis.call("ZRANGEBYSCORE", skey(status), "(" .. after, "+inf", "WITHSCORES")
  end
  for i = 1, #flat, 2 do
    merged[#merged + 1] = { tonumber(flat[i + 1]), flat[i] }
  end
end
table.sort(merged, function(a, b) return a[1] < b[1] end)
local out = {}
for i, entry in ipairs(merged) do
  if count_max >= 0 and i > count_max then
    break
  end
  out[i] = state(entry[2])
end
return out
