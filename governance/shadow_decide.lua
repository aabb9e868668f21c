-- shadow_decide.lua — shadow mode (docs/policy-changes.md §"Shadow mode"): a candidate policy's caps decided on its
-- own counters, beside the enforced policy's; prepended to governed_call.lua and shadow_call.lua.
-- shadow_decide(dedup, hour, spend, calls, now, window, max_actions, max_calls, max_spend, cost, tool, member,
-- day_seconds) → what the candidate decides: 'idempotency_key_hit' (a repeat of a call it allowed within the dedup
-- window), a limit's reason, or 'within_budget' — then the call is counted on the candidate's counters (its hourly
-- set, its per-tool day counts, its day spend in micro-dollars, its dedup entry), as the enforced policy's are.
local function shadow_decide(dedup, hour, spend, calls, now, window, max_actions, max_calls, max_spend, cost, tool,
                             member, day_seconds)
  window = tonumber(window)
  if window > 0 and redis.call('EXISTS', dedup) == 1 then
    return 'idempotency_key_hit'
  end
  now = tonumber(now)
  redis.call('ZREMRANGEBYSCORE', hour, '-inf', now - 3600000)
  local actions = redis.call('ZCARD', hour)
  local count = tonumber(redis.call('HGET', calls, tool) or '0')
  local spent = tonumber(redis.call('GET', spend) or '0')
  cost = tonumber(cost)
  if tonumber(max_actions) >= 0 and actions >= tonumber(max_actions) then
    return 'hourly_action_limit_exceeded'
  end
  if tonumber(max_calls) >= 0 and count >= tonumber(max_calls) then
    return 'tool_call_limit_exceeded'
  end
  if tonumber(max_spend) >= 0 and spent + cost > tonumber(max_spend) then
    return 'daily_spend_exceeded'
  end
  redis.call('ZADD', hour, now, member)
  redis.call('PEXPIRE', hour, 3700000)
  redis.call('HINCRBY', calls, tool, 1)
  redis.call('EXPIRE', calls, day_seconds)
  redis.call('INCRBY', spend, cost)
  redis.call('EXPIRE', spend, day_seconds)
  if window > 0 then
    redis.call('SET', dedup, '1', 'PX', window)
  end
  return 'within_budget'
end
