-- detectors.lua — one governed call's decision observed by the containment detectors, as one atomic step after the
-- decision is recorded (docs/governance.md §"Containment detectors"): the agent's small counters updated, each
-- detector that is on tested on them — nothing read from history — and what fired answered with its numbers.
-- Firing is deduplicated here, between processes: call_loop fires when its counter reaches exactly count + 1 (once
-- per counter, which lives one window), deny_spike and spend_velocity when their "fired" marker is set (SET NX, one
-- window), first_high_risk_tool when its SADD adds the tool (once per agent and tool).
-- KEYS[1] minutes          per-minute ring  oo:{a<acct>}:gov:<agent>:det:min   (hash, slot i = epoch minute % 60:
--                          t<i> = that minute, c<i> = calls, b<i> = blocked, s<i> = spend in micro-$; a slot whose
--                          t<i> is not the minute expected is stale and counts 0) — only with deny_spike or
--                          spend_velocity on
-- KEYS[2] hours            per-hour ring    oo:{a<acct>}:gov:<agent>:det:hr   (hash, slot j = epoch hour % 25:
--                          t<j>, c<j> = calls, s<j> = spend in micro-$) — only with spend_velocity on
-- KEYS[3] loop             this args digest's repeats oo:{a<acct>}:gov:<agent>:det:loop:<args_hash>   (hash: n =
--                          total, b = blocked, d = deduplicated, f = ms of the first; lives loop_window seconds from
--                          the first)
-- KEYS[4] risky            the high-risk tools the agent has used  oo:{a<acct>}:gov:<agent>:det:risky   (set)
-- KEYS[5] spike_fired      deny_spike's marker: set for one window when it fires
-- KEYS[6] velocity_fired   spend_velocity's marker: set for one window when it fires
-- KEYS[7] released         ms of the agent's last release (detectors.release): a loop counter begun before it
--                          is stale and starts again from zero
-- ARGV[1] now_ms           now (ms)
-- ARGV[2] blocked          "1": the call was blocked (counts for deny_spike), else "0"
-- ARGV[3] repeat           "b" blocked, "d" deduplicated: the call counts for call_loop ("" it does not)
-- ARGV[4] spend            the call's spend (micro-$, 0 when nothing was charged)
-- ARGV[5] risky_tool       the high-risk tool the call used ("" none, or first_high_risk_tool off)
-- ARGV[6] loop_count       call_loop's count: it fires past it (0 = off)
-- ARGV[7] loop_window      call_loop's window (s)
-- ARGV[8] spike_share      deny_spike's share of blocked calls (parts per million; 0 = off)
-- ARGV[9] spike_min_calls  deny_spike's minimum calls in its window
-- ARGV[10] spike_window    deny_spike's window (minutes)
-- ARGV[11] velocity_factor spend_velocity's factor over the baseline (thousandths; 0 = off)
-- ARGV[12] velocity_min    spend_velocity's minimum spend in its window (micro-$)
-- ARGV[13] velocity_window spend_velocity's window (minutes)
-- Reply: {'ok', <fired>…} where each detector that fired adds its name and its numbers:
--   'call_loop', total, blocked, deduplicated, first_ms
--   'deny_spike', blocked, calls (in its window)
--   'spend_velocity', spend (micro-$, in its window), baseline (micro-$ per window), active hours of the last 24
--   'first_high_risk_tool', tool
local now_ms = tonumber(ARGV[1])
local blocked = ARGV[2] == '1'
local repeat_kind = ARGV[3]
local spend = tonumber(ARGV[4])
local risky_tool = ARGV[5]
local loop_count = tonumber(ARGV[6])
local spike_share = tonumber(ARGV[8])
local spike_window = tonumber(ARGV[10])
local velocity_factor = tonumber(ARGV[11])
local velocity_window = tonumber(ARGV[13])
local reply = {'ok'}

if loop_count > 0 and repeat_kind ~= '' then
  local first = redis.call('HGET', KEYS[3], 'f')
  if first and tonumber(first) <= tonumber(redis.call('GET', KEYS[7]) or '0') then
    redis.call('DEL', KEYS[3])
  end
  local total = redis.call('HINCRBY', KEYS[3], 'n', 1)
  redis.call('HINCRBY', KEYS[3], repeat_kind, 1)
  if total == 1 then
    redis.call('HSET', KEYS[3], 'f', now_ms)
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
  end
  if total == loop_count + 1 then
    local seen = redis.call('HMGET', KEYS[3], 'b', 'd', 'f')
    table.insert(reply, 'call_loop')
    table.insert(reply, total)
    table.insert(reply, tonumber(seen[1] or '0'))
    table.insert(reply, tonumber(seen[2] or '0'))
    table.insert(reply, tonumber(seen[3] or '0'))
  end
end

if spike_share > 0 or velocity_factor > 0 then
  local minute = math.floor(now_ms / 60000)
  local i = minute % 60
  if tonumber(redis.call('HGET', KEYS[1], 't' .. i) or '-1') ~= minute then
    -- A new minute: its slot starts from zero, and the ring lives 2 hours from its latest minute.
    redis.call('HSET', KEYS[1], 't' .. i, minute, 'c' .. i, 0, 'b' .. i, 0, 's' .. i, 0)
    redis.call('EXPIRE', KEYS[1], 7200)
  end
  redis.call('HINCRBY', KEYS[1], 'c' .. i, 1)
  if blocked then
    redis.call('HINCRBY', KEYS[1], 'b' .. i, 1)
  end
  if spend > 0 then
    redis.call('HINCRBY', KEYS[1], 's' .. i, spend)
  end
  -- The window is read only by a call that could fire: a blocked one (deny_spike), a charged one (spend_velocity).
  local span = math.max(spike_share > 0 and blocked and spike_window or 0,
    velocity_factor > 0 and spend > 0 and velocity_window or 0)
  local values = {}
  if span > 0 then
    local fields = {}
    for back = 0, span - 1 do
      local slot = (minute - back) % 60
      table.insert(fields, 't' .. slot)
      table.insert(fields, 'c' .. slot)
      table.insert(fields, 'b' .. slot)
      table.insert(fields, 's' .. slot)
    end
    values = redis.call('HMGET', KEYS[1], unpack(fields))
  end
  local function window(minutes)
    local calls, denied, spent = 0, 0, 0
    for back = 0, minutes - 1 do
      local at = back * 4
      if tonumber(values[at + 1] or '-1') == minute - back then
        calls = calls + tonumber(values[at + 2] or '0')
        denied = denied + tonumber(values[at + 3] or '0')
        spent = spent + tonumber(values[at + 4] or '0')
      end
    end
    return calls, denied, spent
  end
  if spike_share > 0 and blocked then
    local calls, denied = window(spike_window)
    if calls >= tonumber(ARGV[9]) and denied * 1000000 >= spike_share * calls then
      if redis.call('SET', KEYS[5], now_ms, 'NX', 'EX', spike_window * 60) then
        table.insert(reply, 'deny_spike')
        table.insert(reply, denied)
        table.insert(reply, calls)
      end
    end
  end
  if velocity_factor > 0 then
    local hour = math.floor(now_ms / 3600000)
    local j = hour % 25
    if tonumber(redis.call('HGET', KEYS[2], 't' .. j) or '-1') ~= hour then
      redis.call('HSET', KEYS[2], 't' .. j, hour, 'c' .. j, 0, 's' .. j, 0)
      redis.call('EXPIRE', KEYS[2], 26 * 3600)
    end
    redis.call('HINCRBY', KEYS[2], 'c' .. j, 1)
    if spend > 0 then
      redis.call('HINCRBY', KEYS[2], 's' .. j, spend)
    end
    if spend > 0 then
      local _, _, spent = window(velocity_window)
      if spent >= tonumber(ARGV[12]) then
        -- The baseline: the trailing 24 complete hours' spend per window, over the hours the agent made calls in
        -- (an idle night does not make a working hour look like a spike).
        local past = {}
        for back = 1, 24 do
          local slot = (hour - back) % 25
          table.insert(past, 't' .. slot)
          table.insert(past, 'c' .. slot)
          table.insert(past, 's' .. slot)
        end
        local rows = redis.call('HMGET', KEYS[2], unpack(past))
        local active, total = 0, 0
        for back = 1, 24 do
          local at = (back - 1) * 3
          if tonumber(rows[at + 1] or '-1') == hour - back and tonumber(rows[at + 2] or '0') > 0 then
            active = active + 1
            total = total + tonumber(rows[at + 3] or '0')
          end
        end
        local baseline = 0
        if active > 0 then
          baseline = total * velocity_window / (active * 60)
        end
        if spent * 1000 > velocity_factor * baseline then
          if redis.call('SET', KEYS[6], now_ms, 'NX', 'EX', velocity_window * 60) then
            table.insert(reply, 'spend_velocity')
            table.insert(reply, spent)
            table.insert(reply, math.floor(baseline))
            table.insert(reply, active)
          end
        end
      end
    end
  end
end

if risky_tool ~= '' then
  if redis.call('SADD', KEYS[4], risky_tool) == 1 then
    table.insert(reply, 'first_high_risk_tool')
    table.insert(reply, risky_tool)
  end
end

return reply
