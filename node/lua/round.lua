-- round: a leader round's writes in one script, one atomic step: its own node's finishes
-- (finish.lua), then its ops (apply.lua), then its drain (drain.lua). store.py composes it: the
-- three scripts' bodies become the functions finish_main, apply_main and drain_main (each
-- reads the ARGV it is given), ahead of this one. One call instead of three saves two runs of
-- the _lib prelude and two script calls per round, which the leader makes per handful of tasks.
-- ARGV: finish.lua's ARGV (n, ring, 9 per finish), then apply.lua's (n, 6 per op, the direct
-- node), then drain.lua's (term, count_max). Answers {finish's answer, apply's, drain's}.
local p = 0

local function take(count)
  local part = {}
  for i = 1, count do
    part[i] = ARGV[p + i]
  end
  p = p + count
  return part
end

local finish_argv = take(2 + tonumber(ARGV[1]) * 9)
local apply_argv = take(2 + tonumber(ARGV[p + 1]) * 6)
local drain_argv = take(2)
if p ~= #ARGV then
  return redis.error_reply("round: " .. #ARGV .. " arguments, the parts take " .. p)
end
local finished = finish_main(finish_argv)
local applied = apply_main(apply_argv)
if applied.err then
  return applied -- a caller bug (an unknown op kind): the error, after the finishes
end
local last = applied[#applied]
if type(last) == "table" and #last == 2 and last[1] == "!target" then
  -- A bad Expire target ends the round where the model raises: no drain after it.
  return { finished, applied, {} }
end
return { finished, applied, drain_main(drain_argv) }
