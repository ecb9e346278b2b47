-- wrk script: POSTs of distinct valid signers to the JSON sign API, counting 202s per thread.
-- Usage: wrk ... -s bench/sign.lua URL -- <slug> <run-tag>
-- Each thread numbers its own requests, so every email is distinct: <tag>-<thread>-<n>@example.org.

local threads = {}
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
  table.insert(threads, thread)
end

function init(args)
  slug = args[1] or "mamay"
  tag = args[2] or "w"
  path = "/api/v1/campaigns/" .. slug .. "/signatures"
  n = 0
  ok = 0
  bad = 0
  headers = { ["Content-Type"] = "application/json" }
  langs = { "en", "ru", "kk" }  -- the mails differ in cost (Cyrillic subjects are encoded words)
end

function request()
  n = n + 1
  local body = string.format(
    '{"name":"Bench Signer %d","email":"%s-%d-%d@example.org","country":"DE","city":"Berlin",' ..
    '"message":"Free him now.","consent":true,"lang":"%s"}', n, tag, tid, n, langs[n % 3 + 1])
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status == 202 then ok = ok + 1 else bad = bad + 1 end
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
