"""Load test of `lookalike serve` on loopback: a fixed number of requests from N concurrent
clients, for similar-by-id and for photo search; requests/s and p50/p99 latency.

Targets (issue 5): /items/{id}/similar p99 < 50 ms at >= 300 requests/s; POST /search p50 < 150 ms.
The server runs in its own process (one uvicorn worker); the clients share the same machine.

Usage: .venv/bin/python bench/serve.py [--index demo-out/index] [--clients 50]
       [--similar 3000] [--search 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2 as httpx
import numpy as np

from lookalike import Index

STREET = Path(os.environ.get("LOOKALIKE_DATASETS", "../shared/datasets")) / "street-photos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, port: int, *options: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """`lookalike serve INDEX --port PORT OPTIONS…` in its own process, once /health answers
    (the other bench scripts start their servers here too)."""
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", index,
                             "--port", str(port), *options], stdout=subprocess.DEVNULL,
                            env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                json.load(r)
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.3)


async def load(make_request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
               n: int, clients: int) -> tuple[float, np.ndarray, int]:
    """Run ``n`` requests from ``clients`` concurrent workers; (seconds, latencies, failures)."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal failures
            for i in counter:
                t0 = time.perf_counter()
                r = await make_request(client, i)
                latencies.append(time.perf_counter() - t0)
                failures += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, np.array(latencies), failures


async def paced(make_request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
                n: int, rate: float, clients: int) -> tuple[float, np.ndarray, int]:
    """Open loop: request i is due at i / rate seconds, whether or not earlier ones finished
    (at most ``clients`` in flight); latency counts from the due time, so a server that falls
    behind is charged for the wait (no coordinated omission)."""
    latencies: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal failures
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with gate:
                r = await make_request(client, i)
            latencies.append(time.perf_counter() - due)
            failures += r.status_code != 200

        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, np.array(latencies), failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", default="demo-out/index")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--similar", type=int, default=3000, help="similar-by-id requests")
    ap.add_argument("--search", type=int, default=300, help="photo search requests")
    ap.add_argument("--rate", type=float, default=300.0,
                    help="requests/s of the paced (open-loop) similar-by-id run")
    ap.add_argument("--search-rate", type=float, default=50.0,
                    help="requests/s of the paced photo search run")
    args = ap.parse_args()
    ix = Index.open(args.index)
    ids = ix.items["item_id"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    picks = rng.choice(ids, args.similar)
    photos = sorted((STREET / "images").glob("*.jpg"))[:40]
    if not photos:
        raise SystemExit(f"no street photos under {STREET}")
    blobs = [p.read_bytes() for p in photos]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args.index, port)
    try:
        async def similar(client: httpx.AsyncClient, i: int) -> httpx.Response:
            return await client.get(f"{base}/items/{picks[i]}/similar", params={"k": 10})

        async def search(client: httpx.AsyncClient, i: int) -> httpx.Response:
            return await client.post(f"{base}/search", params={"k": 10},
                                     files={"image": ("p.jpg", blobs[i % len(blobs)], "image/jpeg")})

        asyncio.run(load(similar, 100, 10))  # warm-up
        asyncio.run(load(search, 10, 2))
        rows = []
        for name, fn, n, target in (
                ("GET /items/{id}/similar?k=10", similar, args.similar,
                 lambda rps, p50, p99: f"p99 {p99:.0f} ms / 50 ms = {p99 / 50:.2f}; "
                                       f"{rps:.0f} req/s / 300 = {rps / 300:.2f}"),
                ("POST /search?k=10 (street photo)", search, args.search,
                 lambda rps, p50, p99: f"p50 {p50:.0f} ms / 150 ms = {p50 / 150:.2f}")):
            secs, lat, failed = asyncio.run(load(fn, n, args.clients))
            rps = n / secs
            p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
            rows.append((f"{name}, {args.clients} clients flat out", n, rps, p50, p99, failed,
                         target(rps, p50, p99)))
        for name, fn, n, rate, target in (
                ("GET /items/{id}/similar?k=10", similar, args.similar, args.rate,
                 lambda rps, p50, p99: f"p99 {p99:.0f} ms / 50 ms = {p99 / 50:.2f}; "
                                       f"{rps:.0f} req/s / 300 = {rps / 300:.2f}"),
                ("POST /search?k=10 (street photo)", search, args.search, args.search_rate,
                 lambda rps, p50, p99: f"p50 {p50:.0f} ms / 150 ms = {p50 / 150:.2f}")):
            secs, lat, failed = asyncio.run(paced(fn, n, rate, args.clients))
            p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
            rows.append((f"{name}, paced at {rate:.0f} req/s", n, n / secs, p50, p99, failed,
                         target(n / secs, p50, p99)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"{args.index}: {len(ix)} items, model {ix.model}; {args.clients} concurrent clients, "
          f"one uvicorn worker, clients and server on the same {os.cpu_count()} cores\n")
    print("| endpoint | requests | requests/s | p50 ms | p99 ms | failed | against target |")
    print("|---|---|---|---|---|---|---|")
    for name, n, rps, p50, p99, failed, target in rows:
        print(f"| `{name}` | {n} | {rps:.0f} | {p50:.1f} | {p99:.1f} | {failed} | {target} |")


if __name__ == "__main__":
    main()
