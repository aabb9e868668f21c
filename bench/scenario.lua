-- One Lua script for every wrk scenario of bench/run.py (LuaJIT, wrk 4.1).
-- Environment: SCENARIO (floor | lock_new | lock_dup | lease | gov_permit | gov_shadow | gov_det_off | gov_det_on |
-- gov_dispatch | mcp_call | mcp_dedup | mcp_direct | agent_metrics | noisy_b: the noisy neighbour's account B,
-- check-locks with new keys and permit-only governed calls in turn), API_KEY, RATE (total requests/s; 0 = as fast
-- as possible), THREAD_COUNT, DUP_KEYS (lock_dup key count), MCP_SESSION (mcp_direct: the upstream session
-- bench/mcp.py opened).
-- An MCP answer is HTTP 200 even when it is an error (a JSON-RPC error, or a tool error: a call the gateway refused
-- or the tool failed): those are counted apart and reported as errors ("mcp").
-- RATE paces requests on a schedule (t0 + i / rate per thread), open loop: a slow answer does not slow the
-- schedule down, so the latencies include queueing (no coordinated omission within the connections available).
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_usec; } timeval;
  int gettimeofday(timeval *tv, void *tz);
]]
local function now_ms()
  local tv = ffi.new("timeval")
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local scenario = os.getenv("SCENARIO")
local api_key = os.getenv("API_KEY") or ""
local rate = tonumber(os.getenv("RATE") or "0")
local threads_total = tonumber(os.getenv("THREAD_COUNT") or "1")
local dup_keys = tonumber(os.getenv("DUP_KEYS") or "1000")
local run_tag = os.getenv("RUN_TAG") or tostring(math.floor(now_ms()))
local mcp_session = os.getenv("MCP_SESSION") or ""

local thread_id = 0
local counter = 0
local start = nil
local pending = {}   -- lease: lease ids waiting for their complete
mcp_errors = 0       -- MCP answers that are errors (global: done() reads each thread's with thread:get)
mcp_error = ""       -- the first one's text (a refusal's explanation, the JSON-RPC message), for the report
local threads = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("thread_id", thread_id)
  table.insert(threads, thread)
end

local auth = {["Authorization"] = "Bearer " .. api_key, ["Content-Type"] = "application/json"}
local mcp_auth = {["Authorization"] = "Bearer " .. api_key, ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream"}
local mcp_direct = {["Content-Type"] = "application/json", ["Accept"] = "application/json, text/event-stream",
  ["Mcp-Session-Id"] = mcp_session, ["MCP-Protocol-Version"] = "2025-11-25"}

-- A tools/call of the echo tool; a new text per request (as gov_dispatch's args), so no call is a dedup hit.
local function mcp_call(rpc_id, tool, text)
  return '{"jsonrpc":"2.0","id":' .. tostring(rpc_id) .. ',"method":"tools/call","params":{"name":"' .. tool ..
    '","arguments":{"text":"' .. text .. '"}}}'
end

function delay()
  if rate <= 0 then return 0 end
  if start == nil then start = now_ms() end
  counter = counter + 1
  local per_thread = rate / threads_total
  local due = start + (counter - 1) * 1000 / per_thread
  local wait = due - now_ms()
  if wait < 0 then return 0 end
  return wait
end

local n = 0
function request()
  n = n + 1
  local id = run_tag .. ":" .. tostring(thread_id) .. ":" .. tostring(n)
  if scenario == "floor" then
    return wrk.format("GET", "/bench/floor?k=" .. id)
  elseif scenario == "lock_new" then
    return wrk.format("POST", "/v1/check-lock", auth, '{"key":"new:' .. id .. '","ttl":3600}')
  elseif scenario == "lock_dup" then
    return wrk.format("POST", "/v1/check-lock", auth, '{"key":"dup:' .. tostring(n % dup_keys) .. '","ttl":3600}')
  elseif scenario == "lease" then
    local lease = table.remove(pending)
    if lease ~= nil then
      return wrk.format("POST", "/v1/ai/complete", auth,
        '{"key":"' .. lease[1] .. '","lease_id":"' .. lease[2] .. '","result":{"ok":true}}')
    end
    return wrk.format("POST", "/v1/ai/lease", auth, '{"key":"lease:' .. id .. '","ttl":300}')
  elseif scenario == "gov_permit" then
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-agent","tool":"search.web","args":{"q":"' .. id .. '"}}')
  elseif scenario == "gov_shadow" then
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-shadow","tool":"search.web","args":{"q":"' .. id .. '"}}')
  elseif scenario == "gov_det_off" then
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-det-off","tool":"search.web","spend_usd":0.01,"args":{"q":"' .. id .. '"}}')
  elseif scenario == "gov_det_on" then
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-det-on","tool":"search.web","spend_usd":0.01,"args":{"q":"' .. id .. '"}}')
  elseif scenario == "gov_dispatch" then
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-agent","tool":"bench.receiver","args":{"n":"' .. id .. '"}}')
  elseif scenario == "mcp_call" then
    return wrk.format("POST", "/mcp/bench-agent", mcp_auth, mcp_call(n, "upstream.echo", id))
  elseif scenario == "mcp_dedup" then
    return wrk.format("POST", "/mcp/bench-agent", mcp_auth, mcp_call(n, "upstream.echo", "dup"))
  elseif scenario == "mcp_direct" then
    return wrk.format("POST", "/mcp", mcp_direct, mcp_call(n, "echo", id))
  elseif scenario == "noisy_b" then
    if n % 2 == 0 then
      return wrk.format("POST", "/v1/check-lock", auth, '{"key":"b:' .. id .. '","ttl":3600}')
    end
    return wrk.format("POST", "/v1/ai/run", auth,
      '{"agent_id":"bench-agent","tool":"search.web","args":{"q":"b:' .. id .. '"}}')
  elseif scenario == "agent_metrics" then
    return wrk.format("GET", "/v1/agents/bench-agent/metrics?period=day", auth)
  end
end

function response(status, headers, body)
  if status == 200 and string.sub(scenario, 1, 4) == "mcp_" then
    local rpc_error = string.find(body, '^{"jsonrpc":%s*"2.0",%s*"id":%s*[^,]*,%s*"error"')
    if rpc_error or string.find(body, '"isError":%s*true') then
      mcp_errors = mcp_errors + 1
      if mcp_error == "" then
        local said = string.match(body, '"text":%s*"([^"]*)"') or string.match(body, '"message":%s*"([^"]*)"') or "?"
        mcp_error = string.sub(string.gsub(said, "[^%w %.,:;()_/=%-]", ""), 1, 200)
      end
    end
  end
  if scenario == "lease" and status == 200 then
    local key = string.match(body, '"key":"(lease:[^"]+)"')
    local lease_id = string.match(body, '"lease_id":"(lease_[^"]+)"')
    local acquired = string.find(body, '"status":"acquired"', 1, true)
    if key and lease_id and acquired then
      table.insert(pending, {key, lease_id})
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local mcp, mcp_first = 0, ""
  for _, thread in ipairs(threads) do
    mcp = mcp + (thread:get("mcp_errors") or 0)
    if mcp_first == "" then mcp_first = thread:get("mcp_error") or "" end
  end
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"mcp":%d},"mcp_error":"%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout, mcp, mcp_first))
end
