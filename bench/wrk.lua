-- The request wrk sends and the summary it prints, for bench/loadgen.py.
--
-- Configured from the environment (wrk passes no arguments to a script
-- before init, and a thread's init runs in a state of its own):
--   BENCH_METHOD          GET or POST
--   BENCH_BODY            request body (may be empty)
--   BENCH_HEADERS         "Name: value" lines
--   BENCH_EXPECT_EVENTS   when > 0, every response body is read: it must have
--                         status 200 and exactly this many SSE events
--                         ("data: " lines); others count as bad
--
-- done() prints one line, "BENCH {json}", that the Python side parses:
-- counts, socket errors, latency percentiles (us), events seen, bad answers.

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY") or ""
if body ~= "" then wrk.body = body end
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

local expect = tonumber(os.getenv("BENCH_EXPECT_EVENTS") or "0")
events = 0
bad = 0
first_bad = ""

if expect > 0 then
  function response(status, headers, body)
    local n, at = 0, 1
    while true do
      local s = string.find(body, "data: ", at, true)
      if not s then break end
      n = n + 1
      at = s + 6
    end
    events = events + n
    if status ~= 200 or n ~= expect then
      bad = bad + 1
      if first_bad == "" then
        first_bad = string.format("status %d with %d events: %s", status, n,
          (string.gsub(string.sub(body, 1, 120), "[^%w%p ]", "?")))
      end
    end
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local seen, wrong, example = 0, 0, ""
  for _, thread in ipairs(threads) do
    seen = seen + (thread:get("events") or 0)
    wrong = wrong + (thread:get("bad") or 0)
    if example == "" then example = thread:get("first_bad") or "" end
  end
  example = string.gsub(example, '[\\"]', "'")
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "events": %d, "bad": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"checked": %s, "first_bad": "%s"}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, seen, wrong,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, expect > 0 and "true" or "false", example))
end
