-- check_lock.lua — atomic set-if-absent of an idempotency lock, with the monthly `make` quota.
-- KEYS[1]  lock key        oo:{a<account>}:lock:<key>
-- KEYS[2]  usage hash      oo:{a<account>}:usage:<YYYY-MM>   (billing.usage.usage_key)
-- ARGV[1]  ttl in milliseconds
-- ARGV[2]  value to store: "<first_seen_ms>|<ttl_seconds>|<metadata JSON, or empty>"
-- ARGV[3]  seconds the usage hash is kept
-- ARGV[4]  monthly make limit (-1 = none)
-- ARGV[7]  day of the month "DD" (UTC): the daily fields make:DD (locked) and dup:DD (duplicates) are counted
-- KEYS[3]  the API key's rate-limit bucket (billing/take_token.lua, prepended)   ARGV[5] rate/s   ARGV[6] burst
-- Returns {1, usage after this call} when this call locked, {0, stored value, pttl} when a lock exists,
--         {2, usage} when a new lock is refused because the quota is used up, {3} when the usage hash is missing
--         (Redis lost it: the caller rebuilds it from the database and calls again), {4, ms to wait} when the API
--         key is over its rate limit.
-- A duplicate neither refreshes the TTL nor counts as usage; every call counts as a request.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {3}
end
local wait = take_token(KEYS[3], ARGV[5], ARGV[6])
if wait > 0 then
  return {4, wait}
end
redis.call('HINCRBY', KEYS[2], 'requests_make', 1)
local existing = redis.call('GET', KEYS[1])
if existing then
  redis.call('HINCRBY', KEYS[2], 'dup:' .. ARGV[7], 1)
  return {0, existing, redis.call('PTTL', KEYS[1])}
end
local used = tonumber(redis.call('HGET', KEYS[2], 'make') or '0')
if tonumber(ARGV[4]) >= 0 and used >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[2], 'blocked_make', 1)
  return {2, used}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
used = redis.call('HINCRBY', KEYS[2], 'make', 1)
redis.call('HINCRBY', KEYS[2], 'make:' .. ARGV[7], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, used}
