-- wrk reporter for benchmarks/compare.py: prints one "WRK_JSON {...}" line.
-- WRK_SLOW_US (environment): also report how many requests took longer.
-- wrk's latency for a request runs from writing it to reading the whole
-- answer, so time spent in the server's accept queue is included.

local function share_over(latency, limit, total)
  -- The smallest percentile whose value exceeds `limit`, by bisection:
  -- wrk's latency:percentile(p) is exact over its per-microsecond table.
  if total == 0 or latency.max <= limit then return 0 end
  if latency.min > limit then return 1 end
  local lo, hi = 0.0, 100.0
  for _ = 1, 50 do
    local mid = (lo + hi) / 2
    if latency:percentile(mid) > limit then hi = mid else lo = mid end
  end
  return (100.0 - hi) / 100.0
end

done = function(summary, latency, requests)
  local e = summary.errors
  local limit = tonumber(os.getenv("WRK_SLOW_US") or "1000000")
  local slow = share_over(latency, limit, summary.requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d, "slow_share": %.6f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, slow))
end
