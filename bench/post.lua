-- wrk script for bench/run: every request POSTs the same seed payload with the same
-- headers; `done` prints one machine-readable line with the counts and the latency
-- percentiles (wrk's own --latency table stops at p99).
--
-- The payload file is named by BENCH_PAYLOAD.

local file = assert(io.open(assert(os.getenv("BENCH_PAYLOAD"), "BENCH_PAYLOAD is not set"), "rb"))
local payload = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = payload
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Codeup-Event"] = "Push Hook"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%.1f,"p75":%.1f,"p90":%.1f,"p99":%.1f,"p99_9":%.1f,"max":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
