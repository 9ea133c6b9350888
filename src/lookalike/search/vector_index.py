"""Vector indexes over unit embeddings: exact (faiss flat) and approximate (HNSW, IVF-Flat,
IVF-PQ whose candidates are re-scored exactly), float32 or float16.

An approximate index is tuned when it is built: its search breadth (HNSW ``efSearch``, IVF
``nprobe``) doubles until recall@10 against exact search, on a seeded sample of the items as
queries, reaches the target. The parameters and the measured recall go into the manifest.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from lookalike.errors import choose

KINDS = ("exact", "hnsw", "ivf", "ivfpq")
VECTOR_TYPES = ("float32", "float16")  # how an index folder stores its vectors
RECALL_TARGET = 0.98  # recall@10 an approximate index is tuned to reach
RECALL_QUERIES = 1000  # items that query the index when its recall is measured
MAX_EF_SEARCH = 4096


def default_params(kind: str, n: int, d: int) -> dict[str, int]:
    """Build and search parameters scaled to ``n`` items of ``d`` dimensions."""
    if kind == "exact":
        return {}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 32}
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))  # faiss wants 39 points per list
    if kind == "ivf":
        return {"nlist": nlist, "nprobe": max(1, nlist // 32)}
    if kind == "ivfpq":
        m = next(m for m in (d // 8, d // 16, d // 32, d // 4, d // 2, d, 1)
                 if m >= 1 and d % m == 0)  # sub-quantizers: 8 dimensions per code byte
        nbits = max(1, min(8, int(math.log2(max(2, n // 39)))))  # 39 points per centroid
        return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": max(1, nlist // 32),
                "rerank": 10}
    choose(kind, KINDS, "index type")  # (raises: every kind has returned above)
    raise AssertionError(kind)


def flat_index(embeddings: np.ndarray) -> faiss.Index:
    """Exact inner-product index (cosine on unit vectors)."""
    return make_index(embeddings, "exact", {})


def make_index(embeddings: np.ndarray, kind: str, params: dict[str, int]) -> faiss.Index:
    """A faiss index of ``kind`` over ``embeddings`` (inner product = cosine on unit rows);
    ``params["fp16"]`` keeps the exact, HNSW and IVF indexes' vectors as float16 (half the
    memory)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    fp16 = faiss.ScalarQuantizer.QT_fp16
    if kind == "exact":
        index = faiss.IndexScalarQuantizer(d, fp16, faiss.METRIC_INNER_PRODUCT) \
            if params.get("fp16") else faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(d, fp16, params["M"], faiss.METRIC_INNER_PRODUCT) \
            if params.get("fp16") else faiss.IndexHNSWFlat(d, params["M"],
                                                           faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    elif kind in ("ivf", "ivfpq"):
        quantizer = faiss.IndexFlatIP(d)
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "ivfpq":
            index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"],
                                     ip)
        elif params.get("fp16"):
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, params["nlist"], fp16, ip)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], ip)
        index.own_fields = True
        quantizer.this.disown()
        if n:
            sample = np.random.default_rng(0).permutation(n)[:max(256, 64 * params["nlist"])]
            index.train(x[np.sort(sample)])
    else:
        default_params(kind, n, d)  # raises with the list of kinds
    if n:
        index.add(x)
    set_search_params(index, kind, params)
    return index


def stored_kind(manifest: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """The vector index's kind (exact, hnsw, ivf, ivfpq) and parameters, from a manifest."""
    info = manifest.get("index", {})
    kind = {"flat": "exact"}.get(info.get("type", "flat"), info.get("type", "flat"))
    return kind, dict(info.get("params", {}))


def set_search_params(index: faiss.Index, kind: str, params: dict[str, int]) -> None:
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
    elif kind in ("ivf", "ivfpq"):
        faiss.downcast_index(index).nprobe = params["nprobe"]


class Reranked:
    """An IVF-PQ index whose ``k × rerank`` best candidates are re-scored exactly against the
    stored (memory-mapped) embeddings: PQ finds the neighbourhood, the vectors order it.
    Answers ``search`` like a faiss index."""

    def __init__(self, index: faiss.Index, embeddings: np.ndarray, rerank: int) -> None:
        self.index, self.embeddings, self.rerank = index, embeddings, rerank
        self.d, self.ntotal = index.d, index.ntotal

    def search(self, q: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(self.ntotal, k * self.rerank)
        _, cand = self.index.search(q, fetch, params=params)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])  # ascending rows read a memory-mapped file in order
            s = np.asarray(self.embeddings[c] @ q[i], dtype=np.float32)
            best = np.argsort(-s, kind="stable")[:k]
            rows[i, :len(best)], scores[i, :len(best)] = c[best], s[best]
        return scores, rows


def exact_neighbors(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best items for each query by brute force (no index copy)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def measure_recall(index: faiss.Index, embeddings: np.ndarray, k: int = 10,
                   queries: int = RECALL_QUERIES, seed: int = 0) -> tuple[float, int]:
    """Recall@k of ``index`` against exact search, a seeded sample of the items querying it
    (each item itself left out of both lists). Returns (recall, number of queries)."""
    n = len(embeddings)
    if n < 2:
        return 1.0, 0
    k = min(k, n - 1)
    rows = np.sort(np.random.default_rng(seed).permutation(n)[:queries])
    q = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    truth = exact_neighbors(embeddings, q, k + 1)
    found = index.search(q, k + 1)[1]
    hits = 0
    for r, t, f in zip(rows, truth, found):
        t_set = [x for x in t if x != r][:k]
        f_set = {x for x in f if x != r and x >= 0}
        hits += len(f_set.intersection(t_set))
    return hits / (k * len(rows)), len(rows)


def searchable(index: faiss.Index, embeddings: np.ndarray, kind: str,
               params: dict[str, int]) -> Any:
    """What queries go to: the faiss index, or for IVF-PQ the index with exact re-ranking."""
    return Reranked(index, embeddings, params["rerank"]) if kind == "ivfpq" else index


def build_vector_index(embeddings: np.ndarray, kind: str = "exact",
                       params: dict[str, int] | None = None,
                       target: float = RECALL_TARGET) -> tuple[faiss.Index, dict[str, Any]]:
    """The faiss index (to store), tuned to ``target`` recall@10 when approximate, and its
    manifest entry (type, parameters, measured recall)."""
    n, d = embeddings.shape
    p = {**default_params(kind, n, d), **(params or {})}
    index = make_index(embeddings, kind, p)
    info: dict[str, Any] = {"type": "flat" if kind == "exact" else kind,
                            "metric": "inner_product"}
    if kind == "exact" and not p.get("fp16"):
        return index, info  # recall 1 by construction; float16 vectors are measured
    knobs = {"exact": [], "hnsw": [("efSearch", MAX_EF_SEARCH)],
             "ivf": [("nprobe", p.get("nlist", 1))],
             "ivfpq": [("nprobe", p.get("nlist", 1)), ("rerank", 64)]}[kind]

    def recall() -> tuple[float, int]:
        set_search_params(index, kind, p)
        return measure_recall(searchable(index, embeddings, kind, p), embeddings)

    got, queries = recall()
    for knob, limit in knobs:  # widen the search until the target recall is reached
        while got < target and p[knob] < limit:
            p[knob] = min(limit, p[knob] * 2)
            got, queries = recall()
    info.update({"params": p, "recall@10": round(got, 4), "recall_queries": queries,
                 "recall_target": target})
    return index, info
