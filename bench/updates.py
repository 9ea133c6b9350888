"""Changing a live index at scale, and many writers on one folder (issue 15, acceptance 1 and 2).

Part 1, for each size (default: HNSW at 1,000,000 and exact at 100,000 clustered synthetic
unit vectors of 256 dimensions, bench/synthetic.py): an index folder is built as ``lookalike
build --index KIND`` stores one (cached in bench/out/updates/), then, through the public API
(``Index.add(rows, vectors=...)``, ``Index.delete``, ``Index.open``, ``Index.search_vector``),
each on an empty journal:

- ``Index.add`` of one item, ``--adds`` times: p50/p99;
- ``Index.add`` of 1,000 items in one call, 5 times;
- ``Index.delete`` of one item, ``--adds`` times: p50/p99;
- ``Index.open`` of the folder with 10,000 journal entries (9,000 adds, 1,000 deletes), twice;
- single-query latency, new vectors one at a time, alone and while 50 adds/s stream in from
  another thread (alternating, two rounds each): p50/p99 and the ratio;
- recall@10 of those queries against exact search after 10% of the items were replaced (new
  vectors for existing ids, in batches of 1,000), and their latency then;
- ``Index.compact`` of that state (folds the replacements in: HNSW is rebuilt).

Part 2, the levers measured against each other in the same run: adding into the loaded faiss
HNSW graph in place instead of the growing segment; the folder lock (blocking ``fcntl.flock``,
``filelock``, ``portalocker`` when installed), uncontended and with three processes contending.

Part 3 (``--writers-rounds R``): tests/writers.py, R times: a server with 4 posting threads,
two ``lookalike add`` and one ``lookalike remove`` on the same folder; counts rounds that lost or
mixed anything.

Usage: .venv/bin/python bench/updates.py [--sizes hnsw:1000000,exact:100000] [--writers-rounds 20]
       [--usearch 1000000]
(--usearch needs `pip install usearch`, and the lock table has a portalocker row when
`pip install portalocker` was run: neither is a dependency of lookalike.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from synthetic import clustered

from lookalike import Index
from lookalike.embedders import EmbedderSpec
from lookalike.store.folder import now, write_index

OUT = Path(__file__).resolve().parent / "out" / "updates"
DIM = 256
CENTRES = 2000


def ms(x: np.ndarray) -> str:
    return f"{np.percentile(x, 50) * 1e3:.2f} / {np.percentile(x, 99) * 1e3:.2f}"


def build(kind: str, n: int, x: np.ndarray) -> Path:
    folder = OUT / f"{kind}-{n}"
    if (folder / "manifest.json").exists():
        print(f"reusing {folder}", flush=True)
        return folder
    items = pd.DataFrame({"row": np.arange(n), "item_id": [f"i{r}" for r in range(n)],
                          "product_id": [f"i{r}" for r in range(n)],
                          "image_path": [None] * n, "category": [f"c{r % 50}" for r in range(n)]})
    spec = EmbedderSpec("synthetic-256", "vectors", 224, DIM, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                        "none")
    manifest = {"created": now(), "embedder": spec.to_dict(), "preprocess": {},
                "counts": {"catalog_rows": n, "items": n, "skipped": 0},
                "catalog": {"source": "synthetic", "images_root": str(OUT),
                            "columns": {"id": "item_id", "image": "image_path"},
                            "attributes": ["category"], "has_products": False},
                "skipped": []}
    t0 = time.perf_counter()
    write_index(folder, manifest, items, x, kind)
    print(f"built {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def fresh(folder: Path) -> Index:
    shutil.rmtree(folder / "journal", ignore_errors=True)
    return Index.open(folder, auto_compact=False)


def rows(ids: list[str]) -> list[dict]:
    return [{"item_id": i, "category": "new"} for i in ids]


def timed(f, *args, **kw) -> float:
    t0 = time.perf_counter()
    f(*args, **kw)
    return time.perf_counter() - t0


def queries_latency(ix: Index, q: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
    lat = np.empty(len(q))
    found = []
    for i, v in enumerate(q):
        t0 = time.perf_counter()
        hits = ix.search_vector(v, k)
        lat[i] = time.perf_counter() - t0
        found.append([h.item_id for h in hits])
    return lat, found


def part1(kind: str, n: int, args: argparse.Namespace) -> list[str]:
    rng = np.random.default_rng(0)
    x, centres = clustered(n, DIM, CENTRES, rng)
    new, _ = clustered(max(20_000, n // 10 + 2_000), DIM, centres, rng)
    # an exact query scans every vector: fewer of them give as steady a p99
    q, _ = clustered(args.queries if kind != "exact" else args.queries // 5, DIM, centres, rng)
    folder = build(kind, n, x)
    lines = []
    row = lambda what, got, target="": lines.append(f"| {kind} {n:,} | {what} | {got} | {target} |")

    t = [timed(Index.open, folder, auto_compact=False) for _ in range(2)]
    row("`Index.open`, empty journal (twice)", f"{t[0]:.2f} s, {t[1]:.2f} s")

    ix = fresh(folder)
    lat = np.array([timed(ix.add, rows([f"one-{i}"]), vectors=new[i:i + 1])
                    for i in range(args.adds)])
    row(f"`Index.add`, one item, p50 / p99 ({args.adds} adds)", f"{ms(lat)} ms", "p99 ≤ 20 ms")
    t = [timed(ix.add, rows([f"k{b}-{i}" for i in range(1000)]),
               vectors=new[1000 * b:1000 * (b + 1)]) for b in range(5)]
    row("`Index.add`, 1,000 items in one call (5 calls)",
        f"{np.median(t):.3f} s median, {max(t):.3f} s max", "≤ 1 s")
    victims = rng.choice(n, args.adds, replace=False)
    lat = np.array([timed(ix.delete, [f"i{v}"]) for v in victims])
    row(f"`Index.delete`, one item, p50 / p99 ({args.adds} deletes)", f"{ms(lat)} ms",
        "p99 ≤ 5 ms")

    ix = fresh(folder)
    t0 = time.perf_counter()
    for e in range(10_000):
        if e % 10 == 9:
            ix.delete([f"i{e}"])
        else:
            ix.add(rows([f"j{e}"]), vectors=new[e % len(new)][None])
    made = time.perf_counter() - t0
    t = [timed(Index.open, folder, auto_compact=False) for _ in range(2)]
    row("`Index.open`, 10,000 journal entries (twice)", f"{t[0]:.2f} s, {t[1]:.2f} s",
        "≤ 5 s")
    row("(writing those 10,000 entries one call at a time)", f"{made:.1f} s", "")

    for mode in ("thread", "process"):
        a, s, added = streaming(fresh(folder), q, new, mode)
        where = "from another thread" if mode == "thread" else \
            "from another process (followed by refresh every 0.2 s, as the server does)"
        if mode == "thread":
            row(f"single query (k=10), alone, p50 / p99 ({len(a):,} queries)", f"{ms(a)} ms",
                "")
        row(f"single query while 50 adds/s stream in {where}; {added} adds", f"{ms(s)} ms",
            f"p99 ratio **{np.percentile(s, 99) / np.percentile(a, 99):.2f}** (≤ 1.5)")

    if kind == "hnsw":
        lines += inplace_hnsw(folder, new, args)
    copy = folder.with_name(folder.name + "-replaced")  # compacted below: the build stays
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(folder / "journal", ignore_errors=True)
    ix = Index.open(shutil.copytree(folder, copy), auto_compact=False)
    replaced = rng.choice(n, n // 10, replace=False)
    t0 = time.perf_counter()
    for b in range(0, len(replaced), 1000):
        part = replaced[b:b + 1000]
        ix.add([{"item_id": f"i{r}", "category": f"c{r % 50}"} for r in part],
               vectors=new[b:b + len(part)])
    took = time.perf_counter() - t0
    lat, found = queries_latency(ix, q[:args.recall_queries])  # while the thread indexes them
    t0 = time.perf_counter()
    ix.snapshot().seg.index_added()  # waits for the background thread's round, then the rest
    indexing = time.perf_counter() - t0
    lat2, found2 = queries_latency(ix, q[:args.recall_queries])
    items = ix.items
    emb = np.ascontiguousarray(ix.embeddings, dtype=np.float32)
    truth = faiss.knn(q[:args.recall_queries], emb, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    ids = items["item_id"].to_numpy()

    def recall(found: list[list[str]]) -> float:
        return float(np.mean([len(set(f) & set(ids[t])) / 10 for f, t in zip(found, truth)]))

    row(f"10% replaced ({len(replaced):,} items, batches of 1,000)", f"{took:.1f} s", "")
    row(f"at once: recall@10 ({args.recall_queries:,} queries), query p50 / p99",
        f"**{recall(found):.4f}**, {ms(lat)} ms", "recall ≥ 0.98")
    row("indexing the added vectors in the background, what was left of it", f"{indexing:.1f} s",
        "")
    row("once indexed: recall@10, query p50 / p99", f"**{recall(found2):.4f}**, {ms(lat2)} ms",
        "recall ≥ 0.98")
    del emb, items
    if args.compact:
        t = timed(ix.compact)
        lat3, found3 = queries_latency(ix, q[:args.recall_queries])
        row("`Index.compact` of that state (searches go on meanwhile)", f"{t:.1f} s", "")
        row("after compaction: recall@10, query p50 / p99",
            f"{recall(found3):.4f}, {ms(lat3)} ms", "")
    del ix
    shutil.rmtree(copy)
    return lines


def _stream_adds(ix: Index | str, new: np.ndarray, stop, counter) -> None:
    """50 adds a second until ``stop`` (``ix`` a folder: opened here, in another process)."""
    if not isinstance(ix, Index):
        ix = Index.open(ix, auto_compact=False)
    nxt = time.perf_counter()
    while not stop.is_set():
        i = counter.value
        ix.add(rows([f"{os.getpid()}-{i}"]), vectors=new[i % len(new)][None])
        counter.value += 1
        nxt += 1 / 50
        time.sleep(max(0.0, nxt - time.perf_counter()))


def streaming(ix: Index, q: np.ndarray, new: np.ndarray, mode: str
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """Query latency alone and while 50 adds/s stream in (alternating, two rounds each)."""
    queries_latency(ix, q)  # warm up: every page the queries touch mapped in
    alone, busy = [], []
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0) if mode == "process" else mp.Value("i", 0)
    for _ in range(2):
        alone.append(queries_latency(ix, q)[0])
        if mode == "thread":
            stop = threading.Event()
            worker = threading.Thread(target=_stream_adds, args=(ix, new, stop, counter))
        else:
            stop = ctx.Event()
            worker = ctx.Process(target=_stream_adds,
                                 args=(str(ix.path), new[:5000], stop, counter))
        worker.start()
        if mode == "process":
            follow = threading.Thread(target=_follow, args=(ix, stop))
            follow.start()
            time.sleep(3)  # its start-up (imports) before the clock runs
        busy.append(queries_latency(ix, q)[0])
        stop.set()
        worker.join()
        if mode == "process":
            follow.join()
    return np.concatenate(alone), np.concatenate(busy), counter.value


def _follow(ix: Index, stop) -> None:
    while not stop.is_set():
        ix.refresh()
        time.sleep(0.2)


def inplace_hnsw(folder: Path, new: np.ndarray, args: argparse.Namespace) -> list[str]:
    """The lever that lost: adding into the loaded HNSW graph in place."""
    t0 = time.perf_counter()
    index = faiss.read_index(str(folder / "index.faiss"))
    read = time.perf_counter() - t0
    lat = np.array([timed(index.add, new[i:i + 1]) for i in range(args.adds)])
    t = timed(index.add, new[args.adds:args.adds + 10_000])
    n = index.ntotal - args.adds - 10_000
    del index
    one = (f"| hnsw {n:,} | in place instead: faiss HNSW `add` of one vector, p50 / p99 | "
           f"{ms(lat)} ms | (lost: not safe beside searches) |")
    many = (f"| hnsw {n:,} | in place instead: 10,000 vectors into the loaded graph | {t:.2f} s "
            f"(+ {read:.2f} s to read the graph) | (lost: opening with 10,000 entries) |")
    return [one, many]


def usearch_lever(n: int, args: argparse.Namespace) -> list[str]:
    """usearch (HNSW with native remove, safe to add to while searching) as the one mutable
    index instead: the same vectors and queries, its adds, removes, loading and search."""
    from usearch.index import Index as UIndex

    rng = np.random.default_rng(0)
    x, centres = clustered(n, DIM, CENTRES, rng)
    new, _ = clustered(max(20_000, n // 10 + 2_000), DIM, centres, rng)
    q, _ = clustered(args.queries, DIM, centres, rng)
    path = OUT / f"usearch-{n}.usearch"
    opts = {"ndim": DIM, "metric": "ip", "dtype": "f32", "connectivity": 32,
            "expansion_add": 80, "expansion_search": 128}  # faiss's M, efConstruction, efSearch
    build = None
    if not path.exists():
        ix = UIndex(**opts)
        build = timed(ix.add, np.arange(n), x)
        ix.save(str(path))
        del ix
    t0 = time.perf_counter()
    ix = UIndex.restore(str(path))
    load = time.perf_counter() - t0
    ix.expansion_search = 128
    lines = []
    row = lambda what, got: lines.append(f"| usearch {n:,} | {what} | {got} | |")
    if build is not None:
        row("build (2 threads)", f"{build:.0f} s")
    row("load the saved index", f"{load:.2f} s")
    lat = np.array([timed(ix.add, n + i, new[i]) for i in range(args.adds)])
    row(f"add one vector, p50 / p99 ({args.adds})", f"{ms(lat)} ms")
    lat = np.array([timed(ix.remove, int(r)) for r in rng.choice(n, args.adds, replace=False)])
    row(f"remove one, p50 / p99 ({args.adds})", f"{ms(lat)} ms")
    row("add 10,000 vectors (as opening with 10,000 journal records would)",
        f"{timed(ix.add, np.arange(n + args.adds, n + args.adds + 10_000), new[args.adds:args.adds + 10_000]):.2f} s")

    def latency() -> np.ndarray:
        out = np.empty(len(q))
        for i, v in enumerate(q):
            t0 = time.perf_counter()
            ix.search(v, 10, threads=1)
            out[i] = time.perf_counter() - t0
        return out

    latency()
    alone, busy = [], []
    key = [n + 20_000 + args.adds]
    for _ in range(2):
        alone.append(latency())
        stop = threading.Event()

        def writer(stop: threading.Event) -> None:
            nxt = time.perf_counter()
            while not stop.is_set():
                ix.add(key[0], new[key[0] % len(new)], threads=1)
                key[0] += 1
                nxt += 1 / 50
                time.sleep(max(0.0, nxt - time.perf_counter()))

        th = threading.Thread(target=writer, args=(stop,))
        th.start()
        busy.append(latency())
        stop.set()
        th.join()
    a, b = np.concatenate(alone), np.concatenate(busy)
    row("single query, alone, p50 / p99", f"{ms(a)} ms")
    row("single query while 50 adds/s go into the same index", f"{ms(b)} ms, p99 ratio "
        f"{np.percentile(b, 99) / np.percentile(a, 99):.2f}")
    keys = ix.keys
    alive = np.asarray(keys, np.int64) if not isinstance(keys, np.ndarray) else keys
    vecs = np.asarray(ix.get(alive), np.float32)
    truth = faiss.knn(q[:args.recall_queries], vecs, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    found = ix.search(q[:args.recall_queries], 10).keys
    rec = float(np.mean([len(set(f) & set(alive[t])) / 10 for f, t in zip(found, truth)]))
    row("recall@10 after those changes", f"{rec:.4f}")
    return lines


def _hold(kind: str, path: str, n: int, hold: float, out: mp.Queue) -> None:
    waits = []
    for _ in range(n):
        t0 = time.perf_counter()
        with locker(kind, path):
            waits.append(time.perf_counter() - t0)
            time.sleep(hold)
    out.put(waits)


def locker(kind: str, path: str):
    if kind == "fcntl.flock (ours)":
        from lookalike.store.journal import locked

        return locked(path)
    if kind.startswith("filelock"):
        import filelock

        poll = float(kind.split("poll ")[1].split(" ")[0]) / 1e3
        return filelock.FileLock(os.path.join(path, ".lock"), poll_interval=poll)
    import portalocker

    return portalocker.Lock(os.path.join(path, ".lock"), timeout=60, check_interval=0.001)


def part2() -> list[str]:
    kinds = ["fcntl.flock (ours)", "filelock (poll 50 ms, its default)", "filelock (poll 1 ms)"]
    try:
        import portalocker  # noqa: F401

        kinds.append("portalocker (poll 1 ms)")
    except ImportError:
        pass
    lines = []
    with tempfile.TemporaryDirectory() as d:
        for kind in kinds:
            lat = []
            for _ in range(2000):
                t0 = time.perf_counter()
                with locker(kind, d):
                    pass
                lat.append(time.perf_counter() - t0)
            q: mp.Queue = mp.Queue()
            procs = [mp.Process(target=_hold, args=(kind, d, 200, 0.001, q)) for _ in range(3)]
            t0 = time.perf_counter()
            for p in procs:
                p.start()
            waits = np.concatenate([q.get() for _ in procs])
            for p in procs:
                p.join()
            wall = time.perf_counter() - t0
            lines.append(f"| {kind} | {np.percentile(lat, 50) * 1e6:.0f} µs | "
                         f"{ms(waits)} / {waits.max() * 1e3:.1f} ms | {wall:.2f} s |")
    return lines


def part3(rounds: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lookalike import build_index, read_catalog
    from tests.conftest import make_tiny_catalog
    from tests.writers import run_round

    bad, times, seen, posted = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "cat").mkdir()
        csv = make_tiny_catalog(root / "cat")
        build_index(read_catalog(csv, id_column="sku", image_column="file",
                                 product_column="product"), root / "base",
                    model="color-histogram")
        for r in range(rounds):
            work = root / f"round-{r}"
            work.mkdir()
            t0 = time.perf_counter()
            out = run_round(root / "base", work)
            times.append(time.perf_counter() - t0)
            posted.append(out.posted)
            if out.seen_cli_add_s is not None:
                seen.append(out.seen_cli_add_s)
            if out.problems:
                bad.append(f"round {r}: " + "; ".join(out.problems[:3]))
            print(f"writers round {r}: {out.posted} posts acknowledged, {out.entries} journal "
                  f"entries, {len(out.problems)} problem(s)", flush=True)
            shutil.rmtree(work)
    return [f"| rounds | {rounds} |",
            f"| rounds with a lost, extra, mixed or reordered change | **{len(bad)}** |",
            f"| POST /items acknowledged per round | {min(posted)}–{max(posted)} |",
            f"| the server served the CLI's adds and removal, after they returned | "
            f"{min(seen):.3f}–{max(seen):.3f} s |" if seen else "| served | never |",
            f"| seconds per round | {min(times):.1f}–{max(times):.1f} |", *bad]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="hnsw:1000000,exact:100000",
                    help="kind:items pairs, comma-separated ('' for none)")
    ap.add_argument("--adds", type=int, default=500)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--no-compact", dest="compact", action="store_false")
    ap.add_argument("--writers-rounds", type=int, default=0)
    ap.add_argument("--usearch", type=int, default=0, metavar="N",
                    help="also measure usearch as the mutable index at N vectors")
    ap.add_argument("--no-locks", dest="locks", action="store_false")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, faiss {faiss.__version__}\n", flush=True)
    lines = []
    for spec in filter(None, args.sizes.split(",")):
        kind, n = spec.split(":")
        lines += part1(kind, int(n), args)
        print("\n".join(lines[-3:]), flush=True)
    if lines:
        print("\n| index | measure | result | target |\n|---|---|---|---|")
        print("\n".join(lines))
    if args.usearch:
        print("\n| usearch instead | measure | result | |\n|---|---|---|---|")
        print("\n".join(usearch_lever(args.usearch, args)), flush=True)
    if args.locks:
        print("\n| folder lock | acquire + release, alone | wait p50 / p99 / max, 3 processes × "
              "200 holds of 1 ms | wall |\n|---|---|---|---|")
        print("\n".join(part2()), flush=True)
    if args.writers_rounds:
        print("\n| many writers (tests/writers.py) | |\n|---|---|")
        print("\n".join(part3(args.writers_rounds)))


if __name__ == "__main__":
    main()
