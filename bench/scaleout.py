"""Scale-out engines side by side on a myntra-9k slice: the local engine against the Ray
engine (embedding throughput, identical vectors), the faiss folder against a Milvus
collection on milvus-lite (insert, single-query latency, top-10 agreement with exact), and
float32 against float16 vector storage (size on disk, agreement).

    .venv/bin/python bench/scaleout.py [--items 2000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lookalike import Index
from lookalike.build import MilvusStore, RayEngine, build_index
from lookalike.ingest.catalog import read_catalog
from lookalike.search.neighbors import neighbor_agreement
from lookalike.store.folder import write_index

MYNTRA = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets")) / "myntra-9k"


def latency(ix: Index, ids: list[str]) -> tuple[float, float, float]:
    """p50 and p99 in ms, and queries/s, of one-at-a-time ``similar`` calls."""
    times = []
    for i in ids:
        t0 = time.perf_counter()
        ix.similar(i, 10)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times) * 1000
    return float(np.percentile(t, 50)), float(np.percentile(t, 99)), len(t) / (t.sum() / 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lookalike-scaleout-"))
    df = pd.read_csv(MYNTRA / "catalog.csv")
    n = min(args.items, len(df))
    df = df.iloc[np.sort(np.random.default_rng(7).permutation(len(df))[:n])]
    df.to_csv(work / "catalog.csv", index=False)
    cat = read_catalog(work / "catalog.csv", MYNTRA)
    print(f"myntra-9k slice: {n} items, efficientnet-lite0, {os.cpu_count()} cores")

    rows = []
    t0 = time.perf_counter()
    local = build_index(cat, work / "local")
    rows.append(("local engine, faiss exact", time.perf_counter() - t0, local.timings))
    uri_cat = read_catalog(work / "catalog.csv", MYNTRA.resolve().as_uri())
    t0 = time.perf_counter()
    ray = build_index(uri_cat, work / "ray", engine=RayEngine())
    rows.append(("Ray engine (local Ray, file:// photos)", time.perf_counter() - t0, ray.timings))
    t0 = time.perf_counter()
    milvus = build_index(cat, work / "milvus", index="hnsw",
                         store=MilvusStore(str(work / "milvus.db")))
    rows.append(("local engine, Milvus HNSW (milvus-lite)", time.perf_counter() - t0,
                 milvus.timings))
    print("\n| build | wall s | embedding img/s |")
    print("|---|---|---|")
    for name, wall, t in rows:
        print(f"| {name} | {wall:.1f} | {t['images_per_s']:.1f} |")
    ratio = ray.timings["images_per_s"] / local.timings["images_per_s"]
    print(f"Ray / local embedding throughput: {ratio:.2f}x (Ray start-up included)")

    a, r, m = Index.open(work / "local"), Index.open(work / "ray"), Index.open(work / "milvus")
    diff = float(np.abs(np.asarray(a.embeddings) - np.asarray(r.embeddings)).max())
    print(f"Ray vectors vs local: max |difference| {diff:.2e}; "
          f"top-10 agreement {neighbor_agreement(r, a):.4f}")
    backend = m.manifest["backend"]
    print(f"Milvus: {n} vectors written, indexed and loaded in {backend['ready_s']:.2f} s "
          f"({n / backend['ready_s']:.0f} rows/s), params {backend['params']}, "
          f"recall@10 at build {m.manifest['index']['recall@10']}")
    t0 = time.perf_counter()
    agree = neighbor_agreement(m, a)
    print(f"Milvus all-items top-10 agreement with exact {agree:.4f} "
          f"({time.perf_counter() - t0:.1f} s for {n} items, batched)")
    ids = a.items["item_id"].astype(str).sample(min(args.queries, n), random_state=0).tolist()
    print("\n| single-query similar(k=10) | p50 ms | p99 ms | queries/s |")
    print("|---|---|---|---|")
    lat = {}
    for name, ix in (("faiss exact, in process", a), ("Milvus HNSW, milvus-lite", m)):
        lat[name] = latency(ix, ids)
        p50, p99, qps = lat[name]
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {qps:.0f} |")
    print(f"Milvus / faiss p50 latency: "
          f"{lat['Milvus HNSW, milvus-lite'][0] / lat['faiss exact, in process'][0]:.1f}x")

    print("\n| --index | --vectors | embeddings.npy + index.faiss | recall@10 at build | "
          "top-10 agreement with float32 exact |")
    print("|---|---|---|---|---|")
    manifest = {k: v for k, v in a.manifest.items() if k not in ("index", "files")}
    emb = np.asarray(a.embeddings)
    for kind in ("exact", "hnsw", "ivfpq"):
        sizes = {}
        for vectors in ("float32", "float16"):
            out = work / f"{kind}-{vectors}"
            write_index(out, manifest, a.items, emb, kind,
                        {"fp16": 1} if vectors == "float16" else None)
            ix = Index.open(out)
            sizes[vectors] = sum((out / f).stat().st_size for f in ("embeddings.npy",
                                                                     "index.faiss"))
            recall = ix.manifest["index"].get("recall@10", 1.0)
            print(f"| {kind} | {vectors} | {sizes[vectors] / 2**20:.1f} MiB | {recall} | "
                  f"{neighbor_agreement(ix, a):.4f} |")
        print(f"float16 / float32 size, {kind}: {sizes['float16'] / sizes['float32']:.2f}")


if __name__ == "__main__":
    main()
