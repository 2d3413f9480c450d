-- wrk script: PUT a fixed-size random body as a new needle per request (durable on 201).
-- usage: wrk -s put_needles.lua <url> -- <volume> [body-bytes] [seed]
-- Keys are unique per thread and run (seed). Prints one "RESULT ..." line like the
-- nginx baseline's scripts (latencies in microseconds).

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

local vol, body, seed
local n = 0

function init(args)
   vol = args[1] or error("need volume id after --")
   local size = tonumber(args[2]) or 4096
   seed = tonumber(args[3]) or os.time()
   math.randomseed(seed * 1000 + tid)
   for _ = 1, 10 do math.random() end
   local t = {}
   for i = 1, size do t[i] = string.char(math.random(0, 255)) end
   body = table.concat(t)
   wrk.method = "PUT"
   wrk.headers["Content-Type"] = "application/octet-stream"
end

function request()
   n = n + 1
   -- key: seed (up to 8 digits), thread, then a counter: unique across threads and runs
   -- (an earlier version kept only seed % 100000, so later runs rewrote earlier keys)
   local key = string.format("%d%02d%09d", seed % 100000000 + 1, tid, n)
   return wrk.format("PUT", "/v1/needles/" .. vol .. "/" .. key .. "/0/1", nil, body)
end

function done(s, lat, _)
   local secs = s.duration / 1e6
   io.write(string.format(
      "RESULT requests=%d duration_s=%.3f rps=%.1f bytes=%d mbps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      s.requests, secs, s.requests / secs, s.bytes, s.bytes / secs / 1e6,
      lat:percentile(50), lat:percentile(90), lat:percentile(99), lat.max, lat.mean,
      s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout))
end
