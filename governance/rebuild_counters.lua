-- rebuild_counters.lua — restore an agent's counters from the database ledger after Redis lost them.
-- KEYS[1] ready          the ready marker
-- KEYS[2] hour           the hourly zset
-- KEYS[3] spend          spend today
-- KEYS[4] calls          calls today (hash)
-- ARGV[1] spend_today    spend today (micro-$)
-- ARGV[2] day_seconds    seconds to keep day counters
-- ARGV[3] ready_seconds  the ready marker's TTL (s)
-- ARGV[4] tool_count     the number N of tool/count pairs
-- ARGV[5..] pairs        the N tool/count pairs, then the score/member pairs of the last hour's actions
-- A no-op when another caller already rebuilt (the marker exists): never double-counts.
-- Returns {"ok"} when rebuilt, {"ready"} when the marker was there already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'ready'}
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
local pairs_n = tonumber(ARGV[4])
local i = 5
for _ = 1, pairs_n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('EXPIRE', KEYS[4], ARGV[2])
while ARGV[i] do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', KEYS[2], 3700000)
redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
return {'ok'}
