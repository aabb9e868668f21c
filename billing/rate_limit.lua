-- rate_limit.lua — take one token from an API key's bucket (the endpoints without a Lua script of their own).
-- KEYS[1] bucket  oo:{a<account>}:rl:<api key id>     ARGV[1] tokens per second   ARGV[2] burst
-- Returns 0, or the milliseconds to wait.
return take_token(KEYS[1], ARGV[1], ARGV[2])
