-- shadow_call.lua — a candidate policy's decision for a call the enforced policy ended before its atomic step (the
-- kill switch aside: blocked by its tool lists or the registry, or waiting for an approval), on the candidate's own
-- counters (shadow_decide.lua is prepended; docs/policy-changes.md §"Shadow mode").
-- KEYS[1] dedup                the candidate's dedup entry of these args
-- KEYS[2] hour                 its hourly actions (zset)
-- KEYS[3] spend                its spend today (micro-dollars)
-- KEYS[4] calls                its calls today (hash tool → count)
-- ARGV[1] now_ms               now (ms)
-- ARGV[2] window_ms            dedup window (ms, 0 = off)
-- ARGV[3] max_actions          the candidate's max actions/hour (-1 = none)
-- ARGV[4] max_calls            its max calls of this tool today (-1 = none)
-- ARGV[5] max_spend            its max spend today (micro-$, -1 = none)
-- ARGV[6] cost                 this call's cost under the candidate (micro-$)
-- ARGV[7] tool                 the tool's counter name
-- ARGV[8] member               the call's member in the hourly set
-- ARGV[9] day_seconds          seconds to keep the day counters
-- Returns {"ok", reason}
return {'ok', shadow_decide(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                            ARGV[6], ARGV[7], ARGV[8], ARGV[9])}
