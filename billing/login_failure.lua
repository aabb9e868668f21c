-- login_failure.lua — count one failed dashboard sign-in (billing/login_throttle.py).
-- KEYS: the counters to bump (per email hash, per client address). ARGV[1]: the window in seconds, started by the
-- first failure (later failures do not extend it). Returns the counts after this failure, in KEYS order.
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return counts
