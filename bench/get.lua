-- wrk script: GETs of the URL given to wrk, counting 200s per thread (the baseline and the stats runs).

dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")

function init(args)
  counting(200)
end
