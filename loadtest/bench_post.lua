-- wrk script for the benchmark: POSTs JSON bodies, one per line of a file, round-robin, and
-- prints the run's summary as one machine-readable line ("BENCH_JSON {...}") for loadtest/bench_load.py.
-- Usage: wrk -s loadtest/bench_post.lua <url> -- <bodies.jsonl>
-- Requests are pre-formatted in init() so the Lua cost per request is a table lookup.

local requests = {}
local next_index = 1

function init(args)
  local path = args[1] or error("bench_post.lua: pass the bodies file after --")
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #requests == 0 then error("bench_post.lua: no bodies in " .. path) end
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p99_9": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
