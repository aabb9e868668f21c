-- release.lua — give back what quota.lua counted for a call that did not happen (billing.usage.release).
-- KEYS[1] usage     oo:{a<account>}:usage:<YYYY-MM>   (billing.usage.usage_key)
-- ARGV[1] day       day of the month "DD" (UTC): each field's daily <field>:DD moves with it
-- ARGV[2..] changes field/delta pairs (e.g. ai -1, lease_acquired -1, polling_ai 1)
-- Returns {"ok"}, or {"missing"} when the hash is gone (Redis lost it since the reservation): nothing is written, so
-- the next reserve rebuilds the month from its database mirror instead of finding a hash of bare deltas.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], ARGV[i] .. ':' .. ARGV[1], ARGV[i + 1])
end
return {'ok'}
