"""Memory and body limits of `lookalike serve` under hostile uploads (issue 17, acceptance 2).

1. A burst of 16 concurrent 40-megapixel PNG uploads (about 115 KB each: one colour, so they
   compress well and decode big) to POST /search; the server's peak resident memory (VmHWM of
   its process) is printed, for the default decode budget and for a budget so large that every
   photo decodes at once (what the server did before the gate), side by side with the ratio.
2. A 300 MB body announced by its Content-Length: the bytes sent before the 413 arrives
   (the server answers from the headers, so the client sends none of the body).

Usage: .venv/bin/python bench/uploads.py [--index demo-out/index] [--burst 16]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from serve import free_port, start_server  # bench/serve.py, beside this script

EXTRA_ENV = dict(e.split("=", 1) for e in os.environ.get("UPLOADS_ENV", "").split() if e)


def start(index: str, port: int, budget: int) -> subprocess.Popen:
    return start_server(index, port, "--max-decode-pixels", str(budget),
                        env={**os.environ, **EXTRA_ENV})


def rss(pid: int, field: str) -> int:
    """A memory figure of process ``pid`` from /proc, in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def post(port: int, body: bytes, boundary: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/search?k=5", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary="
                                                          f"{boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def burst(index: str, budget: int, photo: bytes, n: int) -> tuple[int, int, float, list[int]]:
    """(resident memory after start, peak resident memory, seconds, statuses) for ``n``
    concurrent uploads of ``photo``."""
    port = free_port()
    proc = start(index, port, budget)
    try:
        boundary = "lookalikebench"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + photo + \
            f"\r\n--{boundary}--\r\n".encode()
        post(port, body, boundary)  # warm: the first search loads the model
        base = rss(proc.pid, "VmRSS")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(lambda _: post(port, body, boundary), range(n)))
        took = time.perf_counter() - t0
        return base, rss(proc.pid, "VmHWM"), took, codes
    finally:
        proc.terminate()
        proc.wait(30)


def big_body(index: str, size: int) -> tuple[int, bytes]:
    """Announce a ``size``-byte body and wait a second for an answer before sending any of
    it, then send it in 64 KB pieces until the server answers; returns the bytes of body sent
    before the answer came, and its first line."""
    port = free_port()
    proc = start(index, port, 40_000_000)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                      f"boundary=b\r\nContent-Length: {size}\r\n\r\n".encode())
            s.settimeout(1.0)
            sent, answer = 0, b""
            try:
                answer = s.recv(4096)
            except TimeoutError:
                s.setblocking(False)
                deadline = time.monotonic() + 30
                while sent < size and not answer and time.monotonic() < deadline:
                    try:
                        answer = s.recv(4096)
                    except BlockingIOError:
                        pass
                    try:
                        sent += s.send(b"x" * 65536)
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                        time.sleep(0.01)
            return sent, answer.split(b"\r\n")[0]
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="demo-out/index")
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--megapixels", type=float, default=40.0)
    args = ap.parse_args()
    side = int((args.megapixels * 1e6) ** 0.5)
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (180, 60, 40)).save(buf, "PNG", optimize=True)
    photo = buf.getvalue()
    print(f"index {args.index}; {args.burst} concurrent uploads of a {side}×{side} PNG "
          f"({len(photo) / 1e3:.0f} KB), {os.cpu_count()} cores")
    print("| decode budget | server memory after start | peak during the burst | seconds | "
          "answers |")
    print("|---|---|---|---|---|")
    peaks = {}
    for label, budget in (("default (40 MP at once)", 40_000_000),
                          ("unbounded (every photo at once)", 10**12)):
        base, peak, took, codes = burst(args.index, budget, photo, args.burst)
        peaks[label] = peak
        print(f"| {label} | {base / 2**30:.2f} GB | {peak / 2**30:.2f} GB | {took:.1f} | "
              f"{sorted(set(codes))} |", flush=True)
    a, b = peaks.values()
    print(f"peak with the budget / without: {a / b:.2f}×")
    sent, line = big_body(args.index, 300_000_000)
    print(f"300 MB body announced: {sent:,} bytes of it sent before the answer "
          f"{line.decode(errors='replace')!r}")


if __name__ == "__main__":
    main()
