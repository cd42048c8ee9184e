-- wrk replays pre-signed callbacks, each once, then stops.
--   wrk -t1 -c64 -d30s -s bench/callbacks.lua http://127.0.0.1:PORT -- requests.tsv
-- Each line of requests.tsv: path, webhook-id, webhook-timestamp, webhook-signature, body
-- (tab-separated). One wrk thread, so one Lua state walks the file in order.
local requests = {}
local next_index = 1
local answered = 0

function init(args)
  for line in io.lines(args[1]) do
    local path, id, ts, sig, body = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)")
    requests[#requests + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = id,
      ["webhook-timestamp"] = ts,
      ["webhook-signature"] = sig,
    }, body)
  end
end

function request()
  local index = next_index
  if index > #requests then
    index = #requests  -- past the end: repeat the last one until the stop below lands
  end
  next_index = next_index + 1
  return requests[index]
end

function response(status, headers, body)
  answered = answered + 1
  if answered >= #requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests_)
  io.write("wrk-json ")
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
