"""All-items top-k neighbours: lookalike (faiss exact, blocked) vs scikit-learn
``NearestNeighbors(n_neighbors=k, n_jobs=-1)`` (the original recipe's choice), in one run.

1. the real myntra-9k embeddings (an index folder; built here if missing), every item, both tools;
2. synthetic 137,280 × 4096 float32 unit vectors (the original's catalogue size and VGG16 width):
   both tools on the same fixed subset of queries against all 137,280 items, extrapolated to
   every item; ``--full`` also runs lookalike over every item (about 13 minutes on 2 cores).

Neighbours must be identical; where the order differs, the scores must tie.

3. approximate (``--index-kinds hnsw``, issue 7): clustered synthetic 137,280 × 1280 vectors (1,000
   centres: uniform random vectors have no neighbourhoods, real embeddings do), every item's
   top-10 through lookalike's HNSW index (built and tuned to recall@10 >= 0.98 as
   ``lookalike build --index hnsw`` does) against exact search and sklearn on the same first
   ``--queries`` items; recall@10 of the approximate lists against the exact ones.

Usage: .venv/bin/python bench/neighbors.py [--index demo-out/index] [--queries 1024] [--full]
       [--index-kinds hnsw[,ivfpq]] [--ann-only]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors
from synthetic import clustered

from lookalike import Index, build_index, read_catalog
from lookalike.search.neighbors import neighbor_rows
from lookalike.search.vector_index import build_vector_index, flat_index, searchable

DATA = Path(os.environ.get("LOOKALIKE_DATASETS", "../shared/datasets")) / "myntra-9k"


def _drop_self(rows: np.ndarray, k: int) -> np.ndarray:
    return np.array([[r for r in row if r != i][:k] for i, row in enumerate(rows)])


def lookalike_knn(x: np.ndarray, k: int, queries: int | None = None) -> tuple[np.ndarray, float]:
    """All items through lookalike's blocked search, or the first ``queries`` items searched
    against the full base the same way (k + 1, self dropped)."""
    index = flat_index(x)
    t0 = time.perf_counter()
    if queries is None:
        nb = neighbor_rows(index, x, k)
    else:
        nb = _drop_self(index.search(np.ascontiguousarray(x[:queries]), k + 1)[1], k)
    return nb, time.perf_counter() - t0


def sklearn_knn(x: np.ndarray, k: int, queries: int | None = None) -> tuple[np.ndarray, float]:
    nn = NearestNeighbors(n_neighbors=k + 1, n_jobs=-1).fit(x)
    q = x if queries is None else x[:queries]
    t0 = time.perf_counter()
    _, rows = nn.kneighbors(q)
    dt = time.perf_counter() - t0
    return _drop_self(rows, k), dt


def agreement(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Share of identical neighbour lists, and how many differing lists are not explained by
    tied scores (must be 0)."""
    same = (a == b).all(axis=1)
    unexplained = 0
    for i in np.nonzero(~same)[0]:
        sa, sb = np.sort(x[a[i]] @ x[i]), np.sort(x[b[i]] @ x[i])
        unexplained += int(not np.allclose(sa, sb, atol=1e-5))
    return float(same.mean()), unexplained


def synthetic(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 8192):
        b = rng.standard_normal((min(8192, n - i), d), dtype=np.float32)
        x[i:i + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return x


def approximate(x: np.ndarray, k: int, queries: int, kinds: list[str]) -> None:
    exact_nb, exact_t = lookalike_knn(x, k, queries)
    sk_nb, sk_t = sklearn_knn(x, k, queries)
    scale = len(x) / queries
    print(f"\n{len(x):,} x {x.shape[1]} vectors, k={k}; exact and sklearn timed on the first "
          f"{queries:,} items (extrapolated when fewer than all), approximate indexes over every "
          f"item\n")
    print("| method | build | all items' top-k | total | recall@10 vs exact | vs sklearn |")
    print("|---|---|---|---|---|---|")
    note = " (extrapolated)" if scale > 1 else ""
    print(f"| exact (faiss flat) | 0 s | {exact_t * scale:.1f} s{note} | "
          f"{exact_t * scale:.1f} s | 1.0000 | {sk_t / exact_t:.1f}x |")
    print(f"| sklearn NearestNeighbors | – | {sk_t * scale:.1f} s{note} | "
          f"{sk_t * scale:.1f} s | {recall(sk_nb, exact_nb):.4f} | 1.0x |", flush=True)
    for kind in kinds:
        t0 = time.perf_counter()
        index, info = build_vector_index(x, kind)
        build_t = time.perf_counter() - t0
        search = searchable(index, x, kind, info.get("params", {}))
        t0 = time.perf_counter()
        nb = neighbor_rows(search, x, k)
        all_t = time.perf_counter() - t0
        total = build_t + all_t
        print(f"| {kind} ({', '.join(f'{a}={b}' for a, b in info['params'].items())}; "
              f"tuned recall {info['recall@10']:.4f}) | {build_t:.1f} s | {all_t:.1f} s | "
              f"**{total:.1f} s** | **{recall(nb[:queries], exact_nb):.4f}** | "
              f"**{sk_t * scale / total:.1f}x** |", flush=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def row(name: str, n_items: int, queries: int, ours: float, theirs: float, same: float,
        bad: int) -> str:
    scale = n_items / queries
    return (f"| {name} | {n_items:,} | {queries:,} | {ours:.2f} s | {theirs:.2f} s | "
            f"{ours * scale:.1f} s | {theirs * scale:.1f} s | {theirs / ours:.1f}x | "
            f"{same:.4f} | {bad} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--index", default="demo-out/index")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=1024, help="synthetic queries timed")
    ap.add_argument("--n", type=int, default=137_280)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--full", action="store_true", help="also all synthetic items with lookalike")
    ap.add_argument("--index-kinds", default="hnsw",
                    help="approximate indexes on clustered 1280-d vectors ('' to skip)")
    ap.add_argument("--ann-only", action="store_true", help="only the approximate part")
    args = ap.parse_args()
    k = args.k
    kinds = [s for s in args.index_kinds.split(",") if s]
    if args.ann_only:
        approximate(clustered(args.n, 1280, 1000, np.random.default_rng(0))[0], k, args.queries,
                    kinds)
        return

    if not Path(args.index, "manifest.json").exists():
        print(f"building {args.index} from {DATA} …")
        build_index(read_catalog(DATA / "catalog.csv"), args.index)
    x = np.ascontiguousarray(Index.open(args.index).embeddings, dtype=np.float32)
    print(f"{os.cpu_count()} cores; k={k}\n")
    print("| data | items | queries timed | lookalike | sklearn | lookalike, all items | "
          "sklearn, all items | ratio | identical lists | differences not ties |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ours_nb, ours_t = lookalike_knn(x, k)
    sk_nb, sk_t = sklearn_knn(x, k)
    print(row(f"myntra-9k ({x.shape[1]}-d)", len(x), len(x), ours_t, sk_t,
              *agreement(x, ours_nb, sk_nb)),
          flush=True)
    myntra = x

    x = synthetic(args.n, args.dim)
    q = args.queries
    ours_nb, ours_t = lookalike_knn(x, k, q)
    sk_nb, sk_t = sklearn_knn(x, k, q)
    print(row(f"synthetic ({args.dim}-d)", len(x), q, ours_t, sk_t, *agreement(x, ours_nb, sk_nb)),
          flush=True)
    if args.full:
        nb, t = lookalike_knn(x, k)
        same = float((nb[:q] == ours_nb).all(axis=1).mean())
        print(f"\nlookalike over all {len(x):,} synthetic items: {t:.1f} s measured "
              f"(first {q} lists identical to the subset run: {same:.4f}); sklearn extrapolated "
              f"{sk_t * len(x) / q:.0f} s → ratio {sk_t * len(x) / q / t:.1f}x")
    if kinds:
        del x
        print("\nmyntra-9k embeddings, approximate:", end="")
        approximate(myntra, k, len(myntra), kinds)
        approximate(clustered(args.n, 1280, 1000, np.random.default_rng(0))[0], k, args.queries,
                    kinds)


if __name__ == "__main__":
    main()
