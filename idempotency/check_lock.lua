-- check_lock.lua — atomic set-if-absent of an idempotency lock, counting `make` usage when it locks.
-- KEYS[1]  lock key        oo:{a<account>}:lock:<key>
-- KEYS[2]  usage hash      oo:{a<account>}:usage:<YYYY-MM>   (billing.usage.usage_key)
-- ARGV[1]  ttl in milliseconds
-- ARGV[2]  value to store: "<first_seen_ms>|<ttl_seconds>|<metadata JSON, or empty>"
-- ARGV[3]  seconds the usage hash is kept
-- Returns {1, usage after this call} when this call locked, {0, stored value, pttl} when a lock exists.
-- A duplicate neither refreshes the TTL nor counts as usage.
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
local usage = redis.call('HINCRBY', KEYS[2], 'make', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, usage}
