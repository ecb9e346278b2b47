-- wrk script: GETs of the paths in a file (one a line) in turn, counting 200s per thread (any other status is bad).
-- Usage: wrk ... -s bench/paths.lua URL -- <paths file> <threads> ["Name: value" ...]
-- Thread t of n asks for paths t, t + n, t + 2n, ... (wrapping round), so together the threads go through the file
-- in order and a run of fewer requests than there are paths asks for none twice. Extra arguments are headers.

dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")

function init(args)
  counting(200)
  for i = 3, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
  prepared = {}
  for line in io.lines(args[1]) do
    if line ~= "" then table.insert(prepared, wrk.format("GET", line)) end
  end
  step = tonumber(args[2]) or 1
  nxt = tid - 1
end

function request()
  local r = prepared[nxt % #prepared + 1]
  nxt = nxt + step
  return r
end
