-- rebuild_counters.lua — restore an agent's counters from the database ledger after Redis lost them.
-- KEYS[1] ready          the ready marker
-- KEYS[2] hour           the hourly zset
-- KEYS[3] spend          spend today
-- KEYS[4] calls          calls today (hash)
-- KEYS[5..] runs         the agent's runs' counters (governed_call.lua's `run` hash), one per run with charged calls
--                        in the database within the day counters' span
-- ARGV[1] spend_today    spend today (micro-$)
-- ARGV[2] day_seconds    seconds to keep day counters
-- ARGV[3] ready_seconds  the ready marker's TTL (s)
-- ARGV[4] tool_count     the number N of tool/count pairs
-- ARGV[5..] pairs        the N tool/count pairs; then, for each run of KEYS[5..] in order, its first action's ms
--                        (t0), a count F and its F field/count pairs (a, s, t:<tool>); then the score/member pairs of
--                        the last hour's actions
-- The marker holds the replication id of the server that wrote it (replication_id.lua is prepended): a marker of
-- another replication history (a promoted replica's, a restarted server's) is stale and the counters are replaced.
-- A no-op when another caller already rebuilt (the marker holds this server's id): never double-counts, and never
-- overwrites a run's counts made by calls admitted since. A run's counts are written in the step that sets the
-- marker: each count raised to the database's when lower (a hash a promoted replica kept without the last
-- increments), t0 lowered to it; a count above it stays (a run's actions older than the span the database view
-- covers, a reservation whose decision is not written yet).
-- Returns {"ok"} when rebuilt, {"ready"} when the marker was there already.
local stamp = replication_id()
if redis.call('GET', KEYS[1]) == stamp then
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
for r = 5, #KEYS do
  local run = KEYS[r]
  local first = redis.call('HGET', run, 't0')
  if not first or tonumber(ARGV[i]) < tonumber(first) then
    redis.call('HSET', run, 't0', ARGV[i])
  end
  local fields_n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, fields_n do
    local held = redis.call('HGET', run, ARGV[i])
    if not held or tonumber(ARGV[i + 1]) > tonumber(held) then
      redis.call('HSET', run, ARGV[i], ARGV[i + 1])
    end
    i = i + 2
  end
  redis.call('EXPIRE', run, ARGV[2])
end
while ARGV[i] do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', KEYS[2], 3700000)
redis.call('SET', KEYS[1], stamp, 'EX', ARGV[3])
return {'ok'}
