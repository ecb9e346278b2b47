-- wrk script: POSTs of distinct valid signers to the JSON sign API, counting 202s per thread.
-- Usage: wrk ... -s bench/sign.lua URL -- <slug> <run-tag>
-- Each thread numbers its own requests, so every email is distinct: <tag>-<thread>-<n>@example.org.

dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")

function init(args)
  slug = args[1] or "mamay"
  tag = args[2] or "w"
  path = "/api/v1/campaigns/" .. slug .. "/signatures"
  n = 0
  counting(202)
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
