-- governed_call.lua — dedup, limit check and reservation of one governed tool call, as one atomic step
-- (docs/architecture.md §3.5, §4.5, §4.6: "never overshoot"). Concurrent calls of one agent serialise here.
-- KEYS[1] ready                ready marker     oo:{a<acct>}:gov:<agent>:ready   (the replication id of the server
--                              that rebuilt the counters, replication_id.lua: absent or stamped by another server's
--                              replication history → rebuild the counters first)
-- KEYS[2] dedup                dedup entry      oo:{a<acct>}:gov:<agent>:dedup:<args_hash>
-- KEYS[3] hour                 hourly actions   oo:{a<acct>}:gov:<agent>:hour   (zset: member = reservation, score ms)
-- KEYS[4] spend                spend today      oo:{a<acct>}:gov:<agent>:spend:<YYYYMMDD>   (integer micro-dollars)
-- KEYS[5] calls                calls today      oo:{a<acct>}:gov:<agent>:calls:<YYYYMMDD>   (hash tool → count)
-- KEYS[6] usage                the account's usage hash oo:{a<acct>}:usage:<YYYY-MM>
-- KEYS[7] shadow_dedup         the shadow candidate's dedup entry of these args (shadow mode: shadow_decide.lua)
-- KEYS[8] shadow_hour          the candidate's hourly actions
-- KEYS[9] shadow_spend         the candidate's spend today
-- KEYS[10] shadow_calls        the candidate's calls today
-- KEYS[11] run                 the run's counters  oo:{a<acct>}:gov:<agent>:run:<digest of the run id>   (hash:
--                              a = actions, s = spend in micro-$, t:<tool> = calls, t0 = first action's ms; absent:
--                              a new run — after a loss of Redis the agent's rebuild restores its recent runs' hashes)
--                              — read only with ARGV[19] = "1"
-- KEYS[12] bucket              (optional, with ARGV[24] and ARGV[25]) the caller's API-key rate-limit bucket: the
--                              token is taken here (billing/take_token.lua is prepended), so the governed call is
--                              one Redis round trip before its decision
-- ARGV[1] now_ms               now (ms)
-- ARGV[2] window_ms            dedup window (ms, 0 = off)
-- ARGV[3] max_actions          max actions/hour (-1 = none)
-- ARGV[4] max_calls            max calls of this tool today (-1 = none)
-- ARGV[5] max_spend            max spend today (micro-$, -1 = none)
-- ARGV[6] cost                 this call's spend (micro-$)
-- ARGV[7] tool                 the tool's counter name (policies.counter_name)
-- ARGV[8] reservation          the reservation id
-- ARGV[9] day_seconds          seconds to keep the day counters
-- ARGV[10] ai_limit            monthly ai limit (-1 = none)
-- ARGV[11] usage_keep_seconds  the usage hash's TTL (s)
-- ARGV[12] day                 day of the month "DD" (UTC) for the daily usage field ai:DD
-- ARGV[13] dry_run             "1" for a dry run: decide exactly as a real call would, but write nothing (no
--                              reservation, no usage)
-- ARGV[14] shadow              "1": the agent has a shadow candidate whose tool lists pass this call — its caps
--                              are decided too, on its own counters, and its reason ends every recorded reply
--                              ("" otherwise)
-- ARGV[15] shadow_max_actions  the candidate's max actions/hour (-1 = none)
-- ARGV[16] shadow_max_calls    its max calls of this tool today (-1 = none)
-- ARGV[17] shadow_max_spend    its max spend today (micro-$, -1 = none)
-- ARGV[18] shadow_cost         this call's cost under the candidate (micro-$)
-- ARGV[19] run                 "1": the call has a run id and the policy per-run caps, decided after the
--                              agent's caps on the run's counters (docs/governance.md §"Per-run caps")
-- ARGV[20] run_max_actions     max actions per run (-1 = none)
-- ARGV[21] run_max_spend       max spend per run (micro-$, -1 = none)
-- ARGV[22] run_max_calls       max calls of any one tool per run (-1 = none)
-- ARGV[23] run_max_ms          max ms from the run's first action (-1 = none)
-- ARGV[24] rate                (optional, with KEYS[12]) the bucket's tokens per second
-- ARGV[25] burst               (optional, with KEYS[12]) the bucket's size
-- An allowed call also consumes one unit of the monthly `ai` quota, in this same atomic step.
-- Returns {"rebuild"} | {"rebuild_usage"} | {"rate_limited", wait_ms} | {"dedup", value, shadow}
--       | {"quota", usage}
--       | {"blocked" | "ok", reason, actions, calls, spend, ai, run_actions, run_calls, run_spend, run_ms, shadow}
--         (blocked: the counts before this call; ok: after its reservation; ai: the month's `ai` units, run_*: the
--         run's counts and ms since its first action, 0 without per-run caps)
-- (shadow: the candidate's reason, "" without one; decided only for the answers that are recorded)
if redis.call('GET', KEYS[1]) ~= replication_id() then
  return {'rebuild'}
end
if redis.call('EXISTS', KEYS[6]) == 0 then
  return {'rebuild_usage'}
end
local run = ARGV[19] == '1'
if KEYS[12] then
  local wait = take_token(KEYS[12], ARGV[24], ARGV[25])
  if wait > 0 then
    return {'rate_limited', wait}
  end
end
local dry = ARGV[13] == '1'
local function shadow()
  if ARGV[14] ~= '1' then
    return ''
  end
  return shadow_decide(KEYS[7], KEYS[8], KEYS[9], KEYS[10], ARGV[1], ARGV[2], ARGV[15], ARGV[16], ARGV[17],
                       ARGV[18], ARGV[7], ARGV[8], ARGV[9])
end
if not dry then
  redis.call('HINCRBY', KEYS[6], 'requests_ai', 1)
end
local window = tonumber(ARGV[2])
if window > 0 then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    return {'dedup', seen, shadow()}
  end
end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600000)
local actions = redis.call('ZCARD', KEYS[3])
local calls = tonumber(redis.call('HGET', KEYS[5], ARGV[7]) or '0')
local spend = tonumber(redis.call('GET', KEYS[4]) or '0')
local cost = tonumber(ARGV[6])
local used = tonumber(redis.call('HGET', KEYS[6], 'ai') or '0')
local ra, rt, rs, rms = 0, 0, 0, 0
if run then
  local seen = redis.call('HMGET', KEYS[11], 'a', 't:' .. ARGV[7], 's', 't0')
  ra, rt, rs = tonumber(seen[1] or '0'), tonumber(seen[2] or '0'), tonumber(seen[3] or '0')
  rms = now - tonumber(seen[4] or ARGV[1])
end
local reason = nil
if tonumber(ARGV[3]) >= 0 and actions >= tonumber(ARGV[3]) then
  reason = 'hourly_action_limit_exceeded'
elseif tonumber(ARGV[4]) >= 0 and calls >= tonumber(ARGV[4]) then
  reason = 'tool_call_limit_exceeded'
elseif tonumber(ARGV[5]) >= 0 and spend + cost > tonumber(ARGV[5]) then
  reason = 'daily_spend_exceeded'
elseif run and tonumber(ARGV[23]) >= 0 and rms > tonumber(ARGV[23]) then
  reason = 'run_time_exceeded'
elseif run and tonumber(ARGV[20]) >= 0 and ra >= tonumber(ARGV[20]) then
  reason = 'run_action_limit_exceeded'
elseif run and tonumber(ARGV[22]) >= 0 and rt >= tonumber(ARGV[22]) then
  reason = 'run_tool_call_limit_exceeded'
elseif run and tonumber(ARGV[21]) >= 0 and rs + cost > tonumber(ARGV[21]) then
  reason = 'run_spend_exceeded'
end
if reason then
  return {'blocked', reason, actions, calls, spend, used, ra, rt, rs, rms, shadow()}
end
if tonumber(ARGV[10]) >= 0 and used >= tonumber(ARGV[10]) then
  if not dry then
    redis.call('HINCRBY', KEYS[6], 'blocked_ai', 1)
  end
  return {'quota', used}
end
if dry then
  return {'ok', '', actions + 1, calls + 1, spend + cost, used + 1, ra + 1, rt + 1, rs + cost, rms, ''}
end
used = redis.call('HINCRBY', KEYS[6], 'ai', 1)
redis.call('HINCRBY', KEYS[6], 'ai:' .. ARGV[12], 1)
redis.call('EXPIRE', KEYS[6], ARGV[11])
redis.call('ZADD', KEYS[3], now, ARGV[8])
redis.call('PEXPIRE', KEYS[3], 3700000)
calls = redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
redis.call('EXPIRE', KEYS[5], ARGV[9])
spend = redis.call('INCRBY', KEYS[4], cost)
redis.call('EXPIRE', KEYS[4], ARGV[9])
if run then
  redis.call('HSETNX', KEYS[11], 't0', now)
  ra = redis.call('HINCRBY', KEYS[11], 'a', 1)
  rt = redis.call('HINCRBY', KEYS[11], 't:' .. ARGV[7], 1)
  rs = redis.call('HINCRBY', KEYS[11], 's', cost)
  redis.call('EXPIRE', KEYS[11], ARGV[9])
end
if window > 0 then
  redis.call('SET', KEYS[2], 'pending:' .. ARGV[8], 'PX', window)
end
return {'ok', '', actions + 1, calls, spend, used, ra, rt, rs, rms, shadow()}
