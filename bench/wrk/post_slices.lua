-- wrk script: every thread posts its own slice of signed deliveries, each exactly once.
--
-- WRK_SLICES_DIR holds slice_<n>.tsv (one "signature<TAB>body" per line) for n = 1..threads;
-- setup() numbers the threads, init() loads that thread's slice, request() walks it.
--
-- The end of a slice: gunicorn's sync workers close the connection after every answer and
-- block on a connection that sends nothing, so a connection may not sit idle (it would hold a
-- worker until the worker timeout). Once its slice is exhausted, a connection therefore sends
-- a cheap filler request (GET /bench-filler, a 404 on every contender) until the last post of
-- its thread has been answered, and leaves a marker file (done_<n>). A thread stops only once
-- every thread has left its marker: a stopped thread leaves its connections open and silent,
-- which would hold workers from the posts still running. The driver then ends wrk at once
-- instead of waiting out -d. Fillers are counted apart; they never count as posts. Wall time comes from clock_gettime through LuaJIT's FFI
-- (wrk's own duration is -d, however early the threads stopped).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now_s()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local path = os.getenv("WRK_PATH") or "/webhook"
local dir = os.getenv("WRK_SLICES_DIR")
local filler = wrk.format("GET", "/bench-filler")

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  thread:set("nthreads", tonumber(os.getenv("WRK_THREADS") or "2"))
  table.insert(threads, thread)
  next_id = next_id + 1
end

-- Per-thread state (each wrk thread runs its own Lua state). Globals, so that done() can read
-- them through thread:get().
bodies = {}
total, issued, answered, fillers_sent, fillers_answered = 0, 0, 0, 0, 0
ok2xx, status4xx, status5xx, other = 0, 0, 0, 0
planned, capped = 0, 0
t_first, t_last, t_exhausted = nil, nil, nil
finished, stopped, checked = false, false, false
nthreads = 0

function init(args)
  local f = assert(io.open(dir .. "/slice_" .. id .. ".tsv", "r"))
  for line in f:lines() do
    local sig, body = line:match("^([^\t]+)\t(.*)$")
    total = total + 1
    bodies[total] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Hub-Signature-256"] = sig,
    }, body)
  end
  f:close()
  planned = total
end

-- The driver's time cap: once the file "stop" exists, the slice ends where it is (posts already
-- sent are still waited for, so nothing in flight is lost or miscounted).
local function cap_reached()
  local m = io.open(dir .. "/stop", "r")
  if m == nil then return false end
  m:close()
  return true
end

function request()
  if not checked then
    -- wrk calls request() once on the first thread's state, before any connection, to check
    -- the script (wrk.c, script_verify_request): that call sends nothing.
    checked = true
    if id == 1 then return bodies[1] end
  end
  if issued < total then
    issued = issued + 1
    if t_first == nil then t_first = now_s() end
    if issued == total then t_exhausted = now_s() end
    return bodies[issued]
  end
  fillers_sent = fillers_sent + 1
  return filler
end

local function all_finished()
  for n = 1, nthreads do
    local m = io.open(dir .. "/done_" .. n, "r")
    if m == nil then return false end
    m:close()
  end
  return true
end

function response(status, headers, body)
  if status == 404 then
    fillers_answered = fillers_answered + 1
  else
    answered = answered + 1
    if issued < total and cap_reached() then
      total = issued
      capped = 1
    end
    if status >= 200 and status < 300 then ok2xx = ok2xx + 1
    elseif status >= 400 and status < 500 then status4xx = status4xx + 1
    elseif status >= 500 then status5xx = status5xx + 1
    else other = other + 1 end
    if answered >= total and not finished then
      finished = true
      t_last = now_s()
      local m = io.open(dir .. "/done_" .. id, "w")
      if m then m:write("done\n"); m:close() end
    end
  end
  if finished and not stopped and all_finished() then
    stopped = true
    wrk.thread:stop()
  end
end

function done(summary, latency, requests_stats)
  local sum = function(name)
    local s = 0
    for _, t in ipairs(threads) do s = s + (tonumber(t:get(name)) or 0) end
    return s
  end
  local first, last = nil, nil
  local per_thread = {}
  for _, t in ipairs(threads) do
    local a, b, e = t:get("t_first"), t:get("t_last"), t:get("t_exhausted")
    if a and (first == nil or a < first) then first = a end
    if b and (last == nil or b > last) then last = b end
    table.insert(per_thread, string.format(
      '{"posts": %d, "answered": %d, "fillers": %d, "first": %.6f, "exhausted": %.6f, "last": %.6f}',
      tonumber(t:get("total")) or 0, tonumber(t:get("answered")) or 0,
      tonumber(t:get("fillers_answered")) or 0, a or -1, e or -1, b or -1))
  end
  local pct = function(p) return latency:percentile(p) end
  io.write("BENCH_JSON {")
  io.write(string.format('"posts": %d, "answered": %d, "ok": %d, "4xx": %d, "5xx": %d, "other": %d, ',
    sum("total"), sum("answered"), sum("ok2xx"), sum("status4xx"), sum("status5xx"), sum("other")))
  io.write(string.format('"issued": %d, "fillers_sent": %d, "fillers_answered": %d, ',
    sum("issued"), sum("fillers_sent"), sum("fillers_answered")))
  io.write(string.format('"planned": %d, "capped": %d, ', sum("planned"), sum("capped")))
  io.write(string.format('"wall_s": %.6f, ', (first and last) and (last - first) or -1))
  io.write('"threads": [' .. table.concat(per_thread, ", ") .. '], ')
  io.write(string.format('"wrk_requests": %d, "wrk_duration_us": %d, ', summary.requests, summary.duration))
  io.write(string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ',
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
  io.write(string.format('"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d',
    latency.min, latency.mean, latency.stdev, latency.max))
  -- Percentiles of the posts alone: the histogram also holds the F answered fillers, which are
  -- the cheapest requests of the run (a 404), so the posts' p-th percentile is the histogram's
  -- (F + p·N)/(N + F)-th. "raw" is the histogram as wrk keeps it, fillers included.
  local n, f = sum("answered"), sum("fillers_answered")
  local points = {1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99}
  local posts, raw = {}, {}
  for _, p in ipairs(points) do
    local adjusted = 100 * (f + p / 100 * n) / (n + f)
    if adjusted > 100 then adjusted = 100 end
    table.insert(posts, string.format('"%s": %d', p, pct(adjusted)))
    table.insert(raw, string.format('"%s": %d', p, pct(p)))
  end
  io.write(', "posts": {' .. table.concat(posts, ", ") .. '}')
  io.write(', "raw": {' .. table.concat(raw, ", ") .. '}}')
  io.write("}\n")
end
