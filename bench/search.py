"""Single-query search latency on a large approximate index (issue 7, acceptance 2).

1,000,000 clustered synthetic unit vectors of 256 dimensions (2,000 centres) in lookalike's
HNSW index, built and tuned as ``lookalike build --index hnsw`` does (``--target`` recall@10
against exact search). Then ``--queries`` new vectors from the same distribution go one at a
time through ``lookalike.search.topk.top_k`` (the path of ``Index.search``), and the script prints
latency p50/p99, queries/s, recall@10 against exact search and the index's memory. The same
is timed for the exact (flat) index on a few queries, for the ratio.

Usage: .venv/bin/python bench/search.py [--n 1000000] [--dim 256] [--queries 10000] [--target 0.98]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import faiss
import numpy as np
from synthetic import clustered

from lookalike.search.topk import top_k
from lookalike.search.vector_index import (
    build_vector_index,
    exact_neighbors,
    flat_index,
    searchable,
)


def latencies(index: object, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(len(queries))
    rows = np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        r, _ = top_k(index, q, k)
        out[i] = time.perf_counter() - t0
        rows[i] = r
    return out, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x, centres = clustered(args.n, args.dim, 2000, rng)
    q, _ = clustered(args.queries, args.dim, centres, rng)
    print(f"{os.cpu_count()} cores; {args.n:,} x {args.dim} base vectors, {args.queries:,} "
          f"queries one at a time, k={args.k}\n", flush=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    index, info = build_vector_index(x, "hnsw", target=args.target)
    build_t = time.perf_counter() - t0
    size = len(faiss.serialize_index(index))
    search = searchable(index, x, "hnsw", info["params"])
    lat, rows = latencies(search, q, args.k)
    truth = exact_neighbors(x, q, args.k)
    rec = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, truth)]))

    flat = flat_index(x)
    few = min(200, len(q))
    flat_lat, _ = latencies(flat, q[:few], args.k)
    del flat
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    ms = lat * 1000
    print("| index | build | p50 | p99 | queries/s (one thread, one at a time) | recall@10 | "
          "index size |")
    print("|---|---|---|---|---|---|---|")
    params = ", ".join(f"{a}={b}" for a, b in info["params"].items())
    print(f"| hnsw ({params}) | {build_t:.0f} s | {np.percentile(ms, 50):.3f} ms | "
          f"**{np.percentile(ms, 99):.3f} ms** | {len(lat) / lat.sum():,.0f} | **{rec:.4f}** | "
          f"{size / 2**20:,.0f} MiB ({size / args.n:.0f} B/item) |")
    fms = flat_lat * 1000
    print(f"| exact (flat), {few} queries | 0 s | {np.percentile(fms, 50):.3f} ms | "
          f"{np.percentile(fms, 99):.3f} ms | {few / flat_lat.sum():,.0f} | 1.0000 | "
          f"{x.nbytes / 2**20:,.0f} MiB ({x.nbytes / args.n:.0f} B/item) |")
    print(f"\nhnsw p50 is {np.percentile(fms, 50) / np.percentile(ms, 50):.0f}x faster than exact; "
          f"tuned recall on {info['recall_queries']} base items {info['recall@10']:.4f}; "
          f"peak RSS {rss1 / 2**20:.1f} GiB (before the index {rss0 / 2**20:.1f} GiB)")


if __name__ == "__main__":
    main()
