-- wrk script for benchmarks/uneven.py: one request per connection
-- (Connection: close, so every request is a new connection the primary
-- dispatches), and a share BURN_SHARE (environment, default 0.005) of them
-- ask for SLOW_PATH (default /burn?ms=20), which keeps the server's event
-- loop busy: /burn burns CPU, /stall blocks the loop without using CPU.
-- Prints one "WRK_JSON {...}" line, as benchmarks/wrk_report.lua does.

local share = tonumber(os.getenv("BURN_SHARE") or "0.005")
local slow_path = os.getenv("SLOW_PATH") or "/burn?ms=20"
local plain, burn

init = function(args)
  -- Formatted here, not when the file loads: only by now does wrk know the
  -- Host header (HTTP/1.1 servers such as uvicorn answer 400 without one).
  plain = wrk.format("GET", "/", {["Connection"] = "close", ["Host"] = wrk.host})
  burn = wrk.format("GET", slow_path,
                    {["Connection"] = "close", ["Host"] = wrk.host})
  -- Each wrk thread has its own Lua state: seed each differently.
  math.randomseed(os.time() + math.floor((os.clock() * 1e6) % 1e6))
end

request = function()
  if math.random() < share then
    return burn
  end
  return plain
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
