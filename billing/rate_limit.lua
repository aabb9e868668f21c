-- rate_limit.lua — take one token from an API key's bucket (the endpoints without a Lua script of their own).
-- KEYS[1] bucket  oo:{a<account>}:rl:<api key id>
-- ARGV[1] rate    tokens per second
-- ARGV[2] burst   the bucket's size
-- Returns {"ok"} when a token was taken, {"rate_limited", milliseconds to wait} when the bucket is empty.
local wait = take_token(KEYS[1], ARGV[1], ARGV[2])
if wait > 0 then
  return {'rate_limited', wait}
end
return {'ok'}
