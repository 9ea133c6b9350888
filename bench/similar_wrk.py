"""Similar-by-id under a compiled load generator (wrk), kept lists against searched answers,
side by side on one server (issue 18).

The same `lookalike serve` answers both: plain requests come from the kept lists
(lookalike.server.cache); the same requests with the re-ranking named explicitly
(``&rerank=<the index's own>``) take the searched path, so the ratio is the cache's gain alone.
Each mode: requests/s at saturation (``wrk -t1 -c32``) and p50/p99 at a fixed rate below it
(``wrk2``-style pacing is not in Debian's wrk, so the fixed rate is approximated by fewer
connections: ``-c4``). The kept lists are warmed first (one request per item).

Usage: .venv/bin/python bench/similar_wrk.py [--index bench/out/quality/efficientnet-lite0]
       [--seconds 10]   (needs wrk: apt-get install wrk)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from serve import free_port, start_server  # bench/serve.py, beside this script

from lookalike import Index

LUA = """
ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
counter = 0
request = function()
  counter = counter + 1
  local id = ids[(counter * 7919) %% #ids + 1]
  return wrk.format("GET", "/items/" .. id .. "/similar?k=10%(extra)s")
end
"""


def wrk(port: int, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%"),
            "non2xx": float(errors.group(1)) if errors else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="bench/out/quality/efficientnet-lite0")
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    ix = Index.open(args.index)
    ids = [quote(str(i), safe="") for i in ix.items["item_id"]]
    own = str(ix.rerank)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
    port = free_port()
    proc = start_server(args.index, port)
    try:
        t0 = time.perf_counter()
        for i in ids:  # warm the kept lists
            urllib.request.urlopen(f"http://127.0.0.1:{port}/items/{i}/similar?k=10").read()
        warm = time.perf_counter() - t0
        print(f"index {args.index}: {len(ids)} items, re-ranking {own}; lists warmed in "
              f"{warm:.1f} s; wrk -t1, {args.seconds} s per row, on the server's 2 cores")
        print("| path | connections | requests/s | p50 ms | p99 ms | non-2xx |")
        print("|---|---|---|---|---|---|")
        rows = {}
        for label, extra in (("kept lists", ""), ("searched", f"&rerank={own}")):
            script = tmp / f"{label[0]}.lua"
            script.write_text(LUA % {"ids": tmp / "ids.txt", "extra": extra})
            for conns in (32, 4):
                r = wrk(port, script, conns, args.seconds)
                rows[label, conns] = r
                print(f"| {label} | {conns} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
                      f"| {r['non2xx']:.0f} |", flush=True)
        print(f"saturation ratio, kept / searched: "
              f"{rows['kept lists', 32]['rps'] / rows['searched', 32]['rps']:.2f}×")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
