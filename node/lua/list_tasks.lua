-- list_tasks: one page of tasks in seq order from an index ZSET, filtered by type and priority,
-- scanning at most scan_max index entries so a sparse filter cannot block Redis.
-- ARGV: index ("all" or a status), after_seq, limit, scan_max, type ("" = any),
--   priority ("" = any). Answers {next_cursor or "", {HGETALL...}...}.
local index, after, limit, scan_max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local want_type, want_priority = ARGV[5], ARGV[6]
local zkey = index == "all" and K_ALL or skey(index)
local flat = redis.call("ZRANGEBYSCORE", zkey, "(" .. after, "+inf", "WITHSCORES",
  "LIMIT", 0, scan_max)
local out = { "" }
local last = nil
local full = false
for i = 1, #flat, 2 do
  local id = flat[i]
  last = flat[i + 1]
  local t, p = unpack(redis.call("HMGET", tkey(id), "type", "priority"))
  if t and (want_type == "" or t == want_type) and (want_priority == "" or p == want_priority) then
    out[#out + 1] = redis.call("HGETALL", tkey(id))
    if #out - 1 >= limit then
      full = true
      break
    end
  end
end
-- A cursor only while more entries may follow: the scan bound or the page limit stopped us.
if last and (full or #flat / 2 >= scan_max) then
  if #redis.call("ZRANGEBYSCORE", zkey, "(" .. last, "+inf", "LIMIT", 0, 1) > 0 then
    out[1] = last
  end
end
return out
