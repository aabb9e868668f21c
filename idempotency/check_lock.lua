-- check_lock.lua — atomic set-if-absent of an idempotency lock, with the monthly `make` quota.
-- KEYS[1] lock                oo:{a<account>}:lock:<key>
-- KEYS[2] usage               oo:{a<account>}:usage:<YYYY-MM>   (billing.usage.usage_key)
-- KEYS[3] bucket              the API key's rate-limit bucket (billing/take_token.lua, prepended)
-- ARGV[1] ttl_ms              the lock's ttl in milliseconds
-- ARGV[2] value               value to store: "<first_seen_ms>|<ttl_seconds>|<metadata JSON, or empty>"
-- ARGV[3] usage_keep_seconds  seconds the usage hash is kept
-- ARGV[4] make_limit          monthly make limit (-1 = none)
-- ARGV[5] rate                the bucket's tokens per second
-- ARGV[6] burst               the bucket's size
-- ARGV[7] day                 day of the month "DD" (UTC): the daily fields make:DD (locked) and dup:DD
--                             (duplicates) are counted
-- Returns {"ok", usage after this call} when this call locked, {"duplicate", stored value, pttl} when a lock
--         exists, {"quota", usage} when a new lock is refused because the quota is used up, {"rebuild_usage"} when
--         the usage hash is missing (Redis lost it: the caller rebuilds it from the database and calls again),
--         {"rate_limited", ms to wait} when the API key is over its rate limit.
-- A duplicate neither refreshes the TTL nor counts as usage; every call counts as a request.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'rebuild_usage'}
end
local wait = take_token(KEYS[3], ARGV[5], ARGV[6])
if wait > 0 then
  return {'rate_limited', wait}
end
redis.call('HINCRBY', KEYS[2], 'requests_make', 1)
local existing = redis.call('GET', KEYS[1])
if existing then
  redis.call('HINCRBY', KEYS[2], 'dup:' .. ARGV[7], 1)
  return {'duplicate', existing, redis.call('PTTL', KEYS[1])}
end
local used = tonumber(redis.call('HGET', KEYS[2], 'make') or '0')
if tonumber(ARGV[4]) >= 0 and used >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[2], 'blocked_make', 1)
  return {'quota', used}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
used = redis.call('HINCRBY', KEYS[2], 'make', 1)
redis.call('HINCRBY', KEYS[2], 'make:' .. ARGV[7], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {'ok', used}
