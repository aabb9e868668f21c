-- login_attempt.lua — let one dashboard sign-in attempt through, or not (billing/login_throttle.py).
-- The check and the count are one step: an attempt is counted as a failure *before* its password is checked (a
-- success takes it back), so concurrent guesses cannot all pass the check before any of them is counted.
-- KEYS[1] email          the failures counted for one email (its hash)
-- KEYS[2] address        the failures counted for one client address
-- ARGV[1] window         the window in seconds, started by the first attempt counted (later ones do not extend it)
-- ARGV[2] email_limit    the limit of KEYS[1]
-- ARGV[3] address_limit  the limit of KEYS[2] (the loops below pair KEYS[i] with ARGV[i + 1])
-- Both keys carry the hash tag {login}, so that on a Redis Cluster they are in one slot.
-- Returns {"ok", count per key…} when the attempt may go on (counted), {"locked_out", seconds to wait} when it is
-- locked out.
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 0 then ttl = tonumber(ARGV[1]) end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then
  return {'locked_out', wait}
end
local counts = {'ok'}
for i, key in ipairs(KEYS) do
  counts[i + 1] = redis.call('INCR', key)
  if counts[i + 1] == 1 then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return counts
