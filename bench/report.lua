-- Shared by the wrk scripts: counts answers with the expected status per thread and prints one JSON summary
-- line (requests, latency percentiles, socket errors) that bench/harness.py reads.

threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function counting(expected)
  ok = 0
  bad = 0
  function response(status, hdrs, body)
    if status == expected then ok = ok + 1 else bad = bad + 1 end
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad = 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_bad = total_bad + t:get("bad")
  end
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, total_ok, total_bad,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
