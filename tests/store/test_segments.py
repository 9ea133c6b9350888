"""A changed index answers like a brute-force search over the items it holds: the sealed index,
the items added since and the tombstones merged right, for every kind of index, with filters,
exclusions and one hit per product; and readers are never stopped by writers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from lookalike import Index
from lookalike.embedders import EmbedderSpec
from lookalike.store import journal
from lookalike.store.folder import now, write_index

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def folder_of_vectors(path: Path, x: np.ndarray, kind: str, fp16: bool = False) -> Path:
    """An index folder over ``x`` as `lookalike build` writes one (items i0, i1, …; products
    of three items each; a colour attribute of four values)."""
    n, dim = x.shape
    items = pd.DataFrame({"row": np.arange(n), "item_id": [f"i{r}" for r in range(n)],
                          "product_id": [f"p{r // 3}" for r in range(n)],
                          "image_path": [None] * n, "colour": [f"c{r % 4}" for r in range(n)]})
    spec = EmbedderSpec(f"vectors-{dim}", "vectors", 224, dim, (0.0,) * 3, (1.0,) * 3, "none")
    manifest = {"created": now(), "embedder": spec.to_dict(), "preprocess": {},
                "counts": {"catalog_rows": n, "items": n, "skipped": 0},
                "catalog": {"source": "vectors", "images_root": str(path),
                            "columns": {"id": "item_id", "image": "image_path",
                                        "product": "product_id"},
                            "attributes": ["colour"], "has_products": True},
                "skipped": []}
    return write_index(path, manifest, items, x, kind, {"fp16": 1} if fp16 else None)


def brute(ix: Index, q: np.ndarray, k: int, where: dict | None = None,
          per_product: bool = False, exclude: str | None = None) -> list[str]:
    items = ix.items
    emb = np.asarray(ix.embeddings, np.float32)
    scores = emb @ q
    keep = np.ones(len(items), bool)
    if where:
        for a, vals in where.items():
            keep &= items[a].astype(str).isin([str(v) for v in vals]).to_numpy()
    ids = items["item_id"].astype(str).to_numpy()
    products = items["product_id"].astype(str).to_numpy()
    skip = set()
    if exclude is not None:
        keep &= ids != exclude
        if per_product:
            skip.add(products[ids == exclude][0])
    out: list[str] = []
    for r in np.argsort(-scores, kind="stable"):
        if not keep[r] or (per_product and products[r] in skip):
            continue
        if per_product:
            skip.add(products[r])
        out.append(ids[r])
        if len(out) == k:
            break
    return out


def change_at_random(ix: Index, rng: np.random.Generator, rounds: int,
                     index_at: Sequence[int] = ()) -> None:
    """Adds of new items, replacements of built and added ones (new vectors, new colours,
    another product), deletions: one change at a time and in batches. At the rounds in
    ``index_at`` the added vectors waiting are indexed (as the background thread does)."""
    fresh = 0
    for r in range(rounds):
        if r in index_at:
            ix.snapshot().seg.index_added()
        ids = ix.items["item_id"].astype(str).tolist()
        op = rng.integers(3)
        if op == 0:
            n = int(rng.integers(1, 6))
            rows = [{"item_id": f"n{fresh + i}", "colour": f"c{rng.integers(4)}",
                     "product_id": f"q{rng.integers(20)}"} for i in range(n)]
            fresh += n
            ix.add(rows, vectors=unit(rng, n))
        elif op == 1:
            pick = rng.choice(ids, int(rng.integers(1, 4)), replace=False)
            ix.add([{"item_id": i, "colour": "c9", "product_id": f"q{rng.integers(20)}"}
                    for i in pick], vectors=unit(rng, len(pick)))
        else:
            ix.delete(list(rng.choice(ids, int(rng.integers(1, 4)), replace=False)))


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf", "ivfpq"])
def test_a_changed_index_answers_like_brute_force(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    path = folder_of_vectors(tmp_path / kind, unit(rng, 600), kind)
    ix = Index.open(path)
    change_at_random(ix, rng, 90, index_at=(30, 60))
    if kind != "exact":  # the added items: some indexed (with tombstones), the rest scanned
        v = ix.snapshot().view
        assert len(v.parts) == 2 and v.parts[1].bits is not None and v.indexed < v.n
    for live in (ix, Index.open(path)):  # in the writer, and replayed from the journal
        assert len(live) == len(ix) and live.items["item_id"].is_unique
        ids = live.items["item_id"].astype(str).tolist()
        for qi in range(25):
            q = unit(rng, 1)[0]
            for opts in ({}, {"where": {"colour": ["c1", "c9"]}}, {"per_product": True}):
                got = [h.item_id for h in live.search_vector(q, 10, **opts)]
                want = brute(live, q, 10, **opts)
                # approximate kinds may miss a neighbour; exact must agree to the item
                if kind == "exact":
                    assert got == want, (qi, opts)
                else:
                    assert len(set(got) & set(want)) >= 8, (qi, opts, got, want)
            item = ids[qi * 7 % len(ids)]
            got = [h.item_id for h in live.similar(item, 5, per_product=True)]
            want = brute(live, live.vector(item), 5, per_product=True, exclude=item)
            assert item not in got
            if kind == "exact":
                assert got == want
        for item, hits in zip(ids[:40], live.similar_slots(live.snapshot(), [
                live.snapshot().slot(i) for i in ids[:40]], [5] * 40)):
            assert [h.item_id for h in hits] == [h.item_id for h in live.similar(item, 5)]


def test_a_float16_folder_stays_float16_and_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = folder_of_vectors(tmp_path / "f16", unit(rng, 300), "exact", fp16=True)
    ix = Index.open(path)
    change_at_random(ix, rng, 30)
    again = Index.open(path)
    assert again.embeddings.dtype == np.float16 and len(again) == len(ix)
    entries, _ = journal.read(path, journal.Cursor(), DIM)
    assert {e.vectors.dtype for e in entries if e.vectors is not None} == {np.dtype(np.float16)}
    for _ in range(20):
        q = unit(rng, 1)[0]
        assert [h.item_id for h in again.search_vector(q, 10)] == brute(again, q, 10)


def test_searches_never_wait_for_writers(tmp_path: Path) -> None:
    """While one thread adds and deletes and another holds the folder's lock, searches keep
    answering, and never return an item deleted before they began."""
    rng = np.random.default_rng(3)
    path = folder_of_vectors(tmp_path / "ix", unit(rng, 500), "hnsw")
    ix = Index.open(path)
    q = unit(rng, 200)
    gone: set[str] = set()
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        i = 0
        while not stop.is_set():
            before = set(gone)
            got = {h.item_id for h in ix.search_vector(q[i % 200], 20)}
            if got & before:
                problems.append(f"deleted items answered: {got & before}")
            i += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(150):
        ix.add([{"item_id": f"w{i}", "colour": "c0"}], vectors=unit(rng, 1))
        if i % 3 == 2:
            ix.delete([f"w{i - 1}"])
            gone.add(f"w{i - 1}")
    with journal.locked(path):  # a writer elsewhere holds the lock: searching goes on
        n = len(ix.search_vector(q[0], 5))
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert n == 5 and len(Index.open(path)) == 500 + 100


def test_added_items_are_indexed_in_the_background(tmp_path: Path, monkeypatch) -> None:
    import lookalike.store.growing

    monkeypatch.setattr(lookalike.store.growing, "INDEX_AFTER_BYTES", 64 * DIM * 4)
    rng = np.random.default_rng(4)
    path = folder_of_vectors(tmp_path / "ix", unit(rng, 400), "hnsw")
    ix = Index.open(path)
    for i in range(30):
        ix.add([{"item_id": f"b{i}-{j}", "colour": "c1"} for j in range(10)],
               vectors=unit(rng, 10))
        if i % 4 == 3:
            ix.delete([f"b{i}-0", f"i{i}"])
    end = time.monotonic() + 10
    while ix.snapshot().view.indexed < 400 + 300 - 64 and time.monotonic() < end:
        time.sleep(0.01)
    v = ix.snapshot().view
    assert len(v.parts) == 2 and isinstance(v.parts[1].index, faiss.IndexHNSW)
    for _ in range(30):
        q = unit(rng, 1)[0]
        got = [h.item_id for h in ix.search_vector(q, 10)]
        assert len(set(got) & set(brute(ix, q, 10))) >= 9
        assert not {"b3-0", "b7-0"} & set(got)


EXIT_WHILE_INDEXING = """
import sys
import numpy as np
import lookalike.store.growing
from lookalike import Index
lookalike.store.growing.INDEX_CHUNK = 10**6  # one long chunk: the thread is inside faiss at the end
rng = np.random.default_rng(0)
x = rng.standard_normal((30000, 64)).astype(np.float32)
ix = Index.open(sys.argv[1], auto_compact=sys.argv[2] == "compact")
ix.add([{"item_id": f"n{i}", "colour": "c1"} for i in range(len(x))],
       vectors=x / np.linalg.norm(x, axis=1, keepdims=True))
print(ix.snapshot().view.indexed, flush=True)  # and the script ends at once
"""


@pytest.mark.parametrize("compact", [False, True])
def test_a_process_may_end_while_its_threads_index_and_compact(tmp_path: Path,
                                                               compact: bool) -> None:
    """The background threads are inside faiss or pyarrow when the interpreter exits: it waits
    for them (a thread inside faiss at exit aborts the process; pyarrow's converter pool is
    gone by then), and a compaction they started completes."""
    import subprocess
    import sys

    path = folder_of_vectors(tmp_path / "ix", unit(np.random.default_rng(5), 2000, 64), "hnsw")
    p = subprocess.run([sys.executable, "-c", EXIT_WHILE_INDEXING, str(path),
                        "compact" if compact else "-"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert int(p.stdout.split()[0]) < 32000  # it ended before the thread was done
    ix = Index.open(path)
    assert len(ix) == 32000 and ("journal" in ix.manifest) is not compact
