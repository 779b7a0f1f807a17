-- live_states: non-terminal tasks with seq > after_seq, in seq order, at most count_max (all
-- if negative): a new leader's rebuild reads them chunk by chunk (StoreModel.live_states).
-- ARGV: after_seq, count_max. Answers a list of states.
local after, count_max = ARGV[1], tonumber(ARGV[2])
local LIVE = { "pending", "queued", "running", "failed" }
-- Each status ZSET is scored by seq, so each answers its first count_max in seq order; a
-- linear 4-way merge of those runs keeps the first count_max overall.
local runs = {}
for k, status in ipairs(LIVE) do
  if count_max >= 0 then
    runs[k] = redis.call("ZRANGEBYSCORE", skey(status), "(" .. after, "+inf", "WITHSCORES",
      "LIMIT", 0, count_max)
  else
    runs[k] = redis.call("ZRANGEBYSCORE", skey(status), "(" .. after, "+inf", "WITHSCORES")
  end
end
local heads = { 1, 1, 1, 1 }
local out = {}
while count_max < 0 or #out < count_max do
  local best, best_seq = nil, nil
  for k = 1, 4 do
    local run, h = runs[k], heads[k]
    if h <= #run then
      local seq = tonumber(run[h + 1])
      if best_seq == nil or seq < best_seq then
        best, best_seq = k, seq
      end
    end
  end
  if best == nil then
    break
  end
  out[#out + 1] = state(runs[best][heads[best]])
  heads[best] = heads[best] + 2
end
return out
