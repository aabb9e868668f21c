-- dispatch_slots.lua — take a dispatch slot of an account and one of its tool, both or neither (the bulkheads of
-- docs/operations.md §"Slow tools and bulkheads"). A slot is a lease: a member of a sorted set scored by the time it
-- lapses (the call's deadline plus a margin), so a process that dies holding one frees it by then; a live call gives
-- it back the moment its dispatch ends (governance/slots.py).
-- KEYS[1] account      the account's slots  oo:{a<acct>}:slots          (zset: member = reservation, score = lapse ms)
-- KEYS[2] tool         the tool's slots     oo:{a<acct>}:slots:t:<tool> (zset, the same members)
-- KEYS[3] stats        the account's flags  oo:{a<acct>}:slots:stats    (hash: busy:<tool>, busy_at:<tool> …)
-- KEYS[4] refused      refusals of the full limit lately  oo:{a<acct>}:slots:r:<scope>:<tool> (counter, lapses
--                      ARGV[9] ms after the last one: how many callers are waiting for a slot, roughly)
-- ARGV[1] now_ms       now (ms)
-- ARGV[2] lapse_ms     when this slot lapses if it is never given back (ms)
-- ARGV[3] member       the call's reservation id
-- ARGV[4] account_limit  slots of the account
-- ARGV[5] tool_limit   slots of the tool
-- ARGV[6] tool         the tool's counter name (the stats fields)
-- ARGV[7] keep_ms      how long the slot sets outlive their last write (ms)
-- ARGV[8] flags_keep_ms  how long the flags outlive their last write (ms)
-- ARGV[9] refused_keep_ms  how long the refusal counter outlives its last refusal (ms)
-- Returns {"ok", account_in_flight, tool_in_flight}
--       | {"busy", scope, in_flight, limit, first_lapse_ms, refused_lately}
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local scopes = {'account', 'tool'}
for i = 1, 2 do
  if held[i] >= limits[i] then
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local refused = redis.call('INCR', KEYS[4])
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[9]))
    redis.call('HINCRBY', KEYS[3], 'busy:' .. ARGV[6], 1)
    redis.call('HSET', KEYS[3], 'busy_at:' .. ARGV[6], now)
    redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[8]))
    return {'busy', scopes[i], held[i], limits[i], first[2], refused}
  end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return {'ok', held[1] + 1, held[2] + 1}
