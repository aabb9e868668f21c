-- take_token.lua — a token bucket per API key (docs/architecture.md §7.12); prepended to the scripts that use it.
-- take_token(key, rate, burst) → 0 when a token was taken, else the milliseconds until one is available.
-- rate: tokens per second (refill), burst: bucket size. Redis's own clock, so all web hosts agree.
local function take_token(key, rate, burst)
  rate = tonumber(rate)
  burst = tonumber(burst)
  if rate <= 0 or burst <= 0 then
    return 0  -- a plan row without a rate limit (0) is unlimited, never a division by zero
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
    return math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return 0
end
