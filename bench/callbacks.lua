-- wrk replays pre-signed callbacks for a fixed time.
--   wrk -t1 -c64 -d3s -s bench/callbacks.lua http://127.0.0.1:PORT -- requests.tsv once|cycle
-- Each line of requests.tsv: path, webhook-id, webhook-timestamp, webhook-signature, body
-- (tab-separated). "once" sends each callback at most once (each completes a distinct
-- task), then only GET /healthz; "cycle" starts over (for the bare endpoint). Only callback
-- answers are counted ("answered", read from each thread when the run is done).
local threads = {}
local requests = {}
local filler = nil
local probed = false
local cycle = false
sent = 0
answered = 0

function setup(thread)
  table.insert(threads, thread)
end

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
  cycle = args[2] == "cycle"
  filler = wrk.format("GET", "/healthz")
end

function request()
  if not probed then
    -- wrk asks for one request before it connects and does not send it: give it a filler.
    probed = true
    return filler
  end
  if sent < #requests or cycle then
    sent = sent + 1
    return requests[(sent - 1) % #requests + 1]
  end
  return filler
end

function response(status, headers, body)
  if body:find('"accepted"') or body:find('"duplicate"') then
    answered = answered + 1
  end
end

function done(summary, latency, requests_)
  local total_answered, total_sent = 0, 0
  for _, thread in ipairs(threads) do
    total_answered = total_answered + thread:get("answered")
    total_sent = total_sent + thread:get("sent")
  end
  io.write(string.format(
    'wrk-json {"answered": %d, "sent": %d, "requests": %d, "duration_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    total_answered, total_sent, summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
