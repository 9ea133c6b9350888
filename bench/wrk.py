"""wrk (apt package `wrk`, a compiled load generator) driven from Python, flat out or paced.

Debian's wrk has no fixed-rate mode (that is wrk2), but it is built with LuaJIT and calls a
script's ``delay()`` before every request, so a paced run is a schedule kept in Lua: request ``i``
is due at ``t0 + i / rate`` (a monotonic clock through LuaJIT's ffi), and each free connection
waits for the next due slot. wrk times a request from when it is sent, so a send that had to wait
for a free connection (the server fell behind) is counted as *late*: a paced row is only an
open-loop measurement when ``late`` is about 0, and the scripts print it beside p99.

Requests are formatted once in ``init`` (a list of strings cycled through), so the generator's
own CPU per request is a table lookup.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lk_timespec;
int clock_gettime(int clk, lk_timespec *ts);
]]
local ts = ffi.new("lk_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local RATE = %(rate)s
local threads = {}
setup = function(thread) table.insert(threads, thread) end

init = function(args)
  requests_ = {}
  local f = io.open("%(requests)s", "rb")
  local raw = f:read("*a")
  f:close()
  -- the requests, already formatted as HTTP, end to end; their lengths one per line
  local at = 1
  for n in io.lines("%(lengths)s") do
    requests_[#requests_ + 1] = string.sub(raw, at, at + tonumber(n) - 1)
    at = at + tonumber(n)
  end
  counter = 0
  slot = 0
  late = 0
  worst = 0
  t0 = nil
end

request = function()
  counter = counter + 1
  return requests_[(counter - 1) %% #requests_ + 1]
end

if RATE > 0 then
  delay = function()
    local t = now()
    if t0 == nil then t0 = t end
    local due = t0 + slot / RATE
    slot = slot + 1
    local wait = due - t
    if wait < -0.001 then
      late = late + 1
      if -wait > worst then worst = -wait end
    end
    if wait <= 0 then return 0 end
    return math.floor(wait * 1000 + 0.5)
  end
end

done = function(summary, latency, requests)
  local l, w = 0, 0
  for _, t in ipairs(threads) do
    l = l + (t:get("late") or 0)
    local tw = t:get("worst") or 0
    if tw > w then w = tw end
  end
  local e = summary.errors
  io.write(string.format(
    'LOOKALIKE {"requests": %%d, "seconds": %%.6f, "p50": %%.3f, "p90": %%.3f, "p99": %%.3f, ' ..
    '"errors": %%d, "status_errors": %%d, "late": %%d, "worst_late_ms": %%.3f}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status, l, w * 1000))
end
"""


@dataclass
class Result:
    """One wrk run: requests/s, latency percentiles in ms (from each send), failures, and the
    paced sends that went out more than 1 ms after their due time (0 for a flat-out run)."""
    requests: int
    seconds: float
    p50: float
    p90: float
    p99: float
    errors: int  # socket errors and timeouts
    status_errors: int  # answers other than 2xx/3xx
    late: int
    worst_late_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def http_get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def http_post_file(path: str, field: str, filename: str, data: bytes,
                   content_type: str = "image/jpeg") -> bytes:
    """A multipart/form-data POST of one file, as a browser's upload form sends it."""
    boundary = "lookalikebenchboundary7MA4YWxk"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def available() -> bool:
    return shutil.which("wrk") is not None


def run(port: int, requests: Sequence[bytes], *, connections: int, seconds: float,
        rate: float = 0.0, timeout_s: float = 10.0) -> Result:
    """``wrk -t1`` against 127.0.0.1:``port``, cycling through ``requests`` (raw HTTP), flat
    out or, with ``rate`` > 0, paced at ``rate`` requests/s."""
    if not available():
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        reqs, lengths = Path(tmp) / "requests.bin", Path(tmp) / "lengths.txt"
        reqs.write_bytes(b"".join(requests))
        lengths.write_text("".join(f"{len(r)}\n" for r in requests))
        script = Path(tmp) / "script.lua"
        script.write_text(LUA % {"rate": repr(float(rate)), "requests": reqs,
                                 "lengths": lengths})
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
                              f"--timeout={timeout_s:g}s", "-s", str(script),
                              f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, check=True).stdout
    m = re.search(r"^LOOKALIKE (\{.*\})$", out, re.MULTILINE)
    if not m:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    return Result(**json.loads(m.group(1)))
