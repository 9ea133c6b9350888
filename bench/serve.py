"""Load test of `lookalike serve` on loopback: similar-by-id (kept lists, and filtered) and photo
search, at saturation and paced at fixed rates below it, with ratios against the numbers last
recorded in docs/benchmarks.md (issue 18).

The load comes from wrk (apt package `wrk`, compiled, bench/wrk.py) when it is installed, so the
clients do not eat the server's cores; otherwise from Python asyncio clients on raw sockets (the
same requests, slower clients: their numbers are not comparable and are marked so). Paced rows
are open loop: each request has a due time; ``late`` counts sends that could not go out on time
because every connection was still waiting (the server fell behind), so a paced p99 holds only
where ``late`` is about 0.

Before measuring, the script waits until the server says (``/health``) that every item's kept
similar list is computed.

Usage: .venv/bin/python bench/serve.py [--index bench/out/quality/efficientnet-lite0]
       [--photo-index bench/out/quality/lite0-int8] [--seconds 10] [--workers N]
       [--record docs/benchmarks.md]
Build the int8 index with: lookalike build ../shared/datasets/myntra-9k/catalog.csv
       --precision int8 --out bench/out/quality/lite0-int8
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
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import wrk  # bench/wrk.py, beside this script

from lookalike import Index

STREET = Path(os.environ.get("LOOKALIKE_DATASETS", "../shared/datasets")) / "street-photos"
FILTER = "gender=Men&articleType=Tshirts"
MARKER = "<!-- bench/serve.py results -->"


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
            health(port)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.3)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return json.load(r)


def wait_for_lists(port: int, ids: Sequence[str] | None, limit_s: float = 600) -> float:
    """Seconds until /health says every item's kept similar list is computed, 8 times in a row
    on new connections (with several workers, each answers for itself). A server that does not
    say (an earlier version, which kept a list once asked for it) is asked for every one of
    ``ids`` instead, or left alone without them."""
    t0 = time.perf_counter()
    if "similar_lists" not in health(port):
        for i in ids or ():
            urllib.request.urlopen(f"http://127.0.0.1:{port}/items/{i}/similar?k=10").read()
        return time.perf_counter() - t0
    full = 0
    while time.perf_counter() - t0 < limit_s:
        lists = health(port).get("similar_lists", {})
        full = full + 1 if lists.get("kept", 0) >= lists.get("items", 1) else 0
        if full == 8:
            return time.perf_counter() - t0
        time.sleep(0.1 if full else 0.5)
    raise SystemExit("the kept similar lists were not computed in time")


# --- the fallback: asyncio clients on raw sockets ---------------------------------------------

async def _client(port: int, requests: Sequence[bytes], due: list[float] | None,
                  counter: list[int], stop: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            i = counter[0]
            counter[0] += 1
            if due is not None:
                t_due = due[0] + i / due[1]
                if t_due > stop:
                    return
                wait = t_due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.001:
                    out["late"] += 1
            if time.perf_counter() >= stop:
                return
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            out["latencies"].append(time.perf_counter() - t0)
            out["status_errors"] += not 200 <= status < 400
    finally:
        writer.close()


def python_load(port: int, requests: Sequence[bytes], *, connections: int, seconds: float,
                rate: float = 0.0) -> wrk.Result:
    """What :func:`wrk.run` measures, from asyncio clients in this process."""
    out: dict = {"latencies": [], "status_errors": 0, "late": 0}
    counter = [0]  # the next request's number, shared by the clients

    async def go() -> float:
        t0 = time.perf_counter()
        due = [t0, rate] if rate > 0 else None
        await asyncio.gather(*(_client(port, requests, due, counter, t0 + seconds, out)
                               for _ in range(connections)))
        return time.perf_counter() - t0

    secs = asyncio.run(go())
    lat = np.array(out["latencies"]) * 1000
    p50, p90, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    return wrk.Result(len(lat), secs, p50, p90, p99, 0, out["status_errors"], out["late"], 0.0)


# --- the rows ---------------------------------------------------------------------------------

def previous(path: Path) -> dict[str, list[float]]:
    """The numbers last recorded under MARKER in ``path``: row name → [req/s, p50, p99]."""
    if not path.is_file() or MARKER not in path.read_text():
        return {}
    rows = {}
    for line in path.read_text().split(MARKER, 1)[1].splitlines()[3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        try:
            rows[cells[0]] = [float(c.replace(",", "")) for c in cells[2:5]]
        except ValueError:
            continue
    return rows


def ratio(now: wrk.Result, before: list[float] | None, paced: bool) -> str:
    if not before:
        return "new row"
    if paced:
        return f"p99 {now.p99 / before[2]:.2f}×"
    return f"req/s {now.rps / before[0]:.2f}×"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="bench/out/quality/efficientnet-lite0",
                    help="index for similar-by-id")
    ap.add_argument("--photo-index", default="bench/out/quality/lite0-int8",
                    help="index for photo search (an int8 one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per row")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced similar-by-id, req/s")
    ap.add_argument("--filtered-rate", type=float, default=300.0)
    ap.add_argument("--photo-rate", type=float, default=40.0)
    ap.add_argument("--record", type=Path, default=Path("docs/benchmarks.md"),
                    help="where the previous numbers are (the table after the marker "
                         f"{MARKER!r})")
    ap.add_argument("--python-clients", action="store_true",
                    help="asyncio clients even where wrk is installed")
    ap.add_argument("server_options", nargs="*",
                    help="passed to lookalike serve (after --), e.g. -- --workers 2")
    args = ap.parse_args()
    use_wrk = wrk.available() and not args.python_clients
    load = wrk.run if use_wrk else python_load
    photos = sorted((STREET / "images").glob("*.jpg"))[:40]
    if not photos:
        raise SystemExit(f"no street photos under {STREET}")
    search = [wrk.http_post_file("/search?k=10", "image", p.name, p.read_bytes())
              for p in photos]
    before = previous(args.record)
    rows: list[tuple[str, wrk.Result, str]] = []

    def measure(name: str, requests: Sequence[bytes], conns: int, rate: float = 0.0) -> None:
        r = load(port, requests, connections=conns, seconds=args.seconds, rate=rate)
        rows.append((name, r, ratio(r, before.get(name), rate > 0)))
        print(f"  {name}: {r.rps:,.0f} req/s, p50 {r.p50:.1f} ms, p99 {r.p99:.1f} ms, "
              f"late {r.late}", file=sys.stderr, flush=True)

    for index, parts in ((args.index, "similar"), (args.photo_index, "photo")):
        port = free_port()
        proc = start_server(index, port, *args.server_options)
        try:
            info = health(port)
            ids = _ids(index) if parts == "similar" else None
            warm = wait_for_lists(port, ids)  # (filling them would compete with the load)
            if parts == "similar":
                plain = [wrk.http_get(f"/items/{i}/similar?k=10") for i in ids]
                filtered = [wrk.http_get(f"/items/{i}/similar?k=10&{FILTER}") for i in ids]
                measure("similar-by-id, kept lists, flat out (32 conn.)", plain, 32)
                measure(f"similar-by-id, kept lists, paced at {args.rate:.0f}/s", plain, 64,
                        args.rate)
                measure("similar-by-id filtered, flat out (32 conn.)", filtered, 32)
                measure(f"similar-by-id filtered, paced at {args.filtered_rate:.0f}/s",
                        filtered, 64, args.filtered_rate)
                head = (f"{index}: {info['items']} items, re-ranking {info['rerank']}; "
                        f"kept lists computed {warm:.1f} s after start")
            else:
                load(port, search[:8], connections=2, seconds=2)  # warm-up
                measure("photo search (int8), flat out (16 conn.)", search, 16)
                measure(f"photo search (int8), paced at {args.photo_rate:.0f}/s", search, 32,
                        args.photo_rate)
                head += f"; photo search: {index} ({info['model']})"
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{head}; load from {'wrk -t1' if use_wrk else 'Python asyncio clients'}, "
          f"{args.seconds:g} s per row, server options {args.server_options or 'none'}, "
          f"{os.cpu_count()} cores shared\n")
    print(MARKER)
    print("| row | requests | requests/s | p50 ms | p99 ms | late sends | errors | against "
          "the last recorded |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r, vs in rows:
        print(f"| {name} | {r.requests} | {r.rps:.0f} | {r.p50:.1f} | {r.p99:.1f} | {r.late} | "
              f"{r.errors + r.status_errors} | {vs} |")


def _ids(index: str) -> list[str]:
    """The index's item ids, URL-quoted, in a fixed random order."""
    ids = Index.open(index).items["item_id"].astype(str).to_numpy()
    return [quote(i, safe="") for i in np.random.default_rng(0).permutation(ids)]


if __name__ == "__main__":
    main()
