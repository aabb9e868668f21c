-- quota.lua — count one unit of a monthly quota if it is below the limit (atomic check + increment).
-- KEYS[1] usage               oo:{a<account>}:usage:<YYYY-MM>   (billing.usage.usage_key)
-- ARGV[1] kind                make | ai (or a statistics field counted without a limit)
-- ARGV[2] limit               the monthly limit (-1 = none)
-- ARGV[3] usage_keep_seconds  seconds to keep the hash
-- ARGV[4] also                a statistics field to count as well (e.g. requests_ai), or empty
-- ARGV[5] day                 day of the month "DD" (UTC) for the daily usage field <kind>:DD, or empty
-- ARGV[6] counted_too         a statistics field counted (and per day, with day) only when the unit is, or empty
-- ARGV[7] read                a field whose value is answered third when counted (e.g. ai), or empty
-- ARGV[8] publish             a wake-up channel to PUBLISH when counted (onceonly_site/wakeups.py), or empty
-- Returns {"rebuild_usage"} when the hash is missing (Redis lost it: rebuild from the database first),
--         {"ok", usage after, value of read} when counted, {"quota", usage} when the quota is used up (the caller
--         decides whether that refuses the call, and counts blocked_<kind> if it does).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'rebuild_usage'}
end
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
end
local used = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) >= 0 and used >= tonumber(ARGV[2]) then
  return {'quota', used}
end
used = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if ARGV[5] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':' .. ARGV[5], 1)
end
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[6], 1)
  if ARGV[5] ~= '' then
    redis.call('HINCRBY', KEYS[1], ARGV[6] .. ':' .. ARGV[5], 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[8], '')
end
local read = 0
if ARGV[7] ~= '' then
  read = tonumber(redis.call('HGET', KEYS[1], ARGV[7]) or '0')
end
return {'ok', used, read}
