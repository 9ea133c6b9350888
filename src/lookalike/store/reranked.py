"""Searching a snapshot of an index with re-ranking: α-query expansion, then the category
vote or classifier (lookalike.search.rerank) ranking one category first, each step through the
snapshot's own search (any vector index kind, filters, one hit per product).

``Index.similar``/``search_vector`` run :func:`ranked` for one query; the server's batches
run :func:`ranked_many` for many items of one snapshot in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.search.neighbors import drop_self
from lookalike.search.rerank import VOTE_POOL, Rerank, expand_queries, vote
from lookalike.search.topk import Where
from lookalike.store.live import Snapshot
from lookalike.store.segments import Segments

#: the category a classifier names for each query vector (n, d)
Classify = Callable[[np.ndarray], list[str]]
Found = tuple[np.ndarray, np.ndarray]  # slots and scores, best first


def ranked(snap: Snapshot, query: np.ndarray, k: int, where: Where | None, per_product: bool,
           exclude: Sequence[int], r: Rerank, column: str | None, classify: Classify | None,
           known: str | None = None) -> Found:
    """The top ``k`` for ``query`` re-ranked by ``r``; ``column``: the index's category
    column; ``known``: the category to rank first, found already."""
    seg, v = snap

    def search(q: np.ndarray, n: int, w: Where | None, skip: Sequence[int]) -> Found:
        return seg.search(v, q, n, where=w, per_product=per_product, exclude=skip)

    if r.expand:
        found, scores = search(query, r.expand, where, exclude)
        query = expand_queries(np.asarray(query, np.float32)[None],
                               seg.vectors(found)[None], scores[None], r.alpha)[0]
    if not r.categorises or column is None or (where and column in where):
        return search(query, k, where, exclude)
    won = known
    if won is None:
        # one search of a pool: its first r.vote vote (or the classifier names the
        # category), and when it holds k items of the winner (in order, so the winner's
        # best k overall) it is the answer
        found, scores = search(query, max(r.vote, VOTE_POOL * k), where, exclude)
        named = None if classify is None else classify(query[None])[0]
        won, answer = from_pool(seg, found, scores, k, r, column, named)
        if won is None:
            return search(query, k, where, exclude)
        if answer is not None and not per_product:  # (per product: a product's best
            return answer  # photo of the category may be outside the pool)
    first = search(query, k, {**(where or {}), column: won}, exclude)
    if len(first[0]) >= k:
        return first
    rest = search(query, k, where, [*exclude, *first[0].tolist()])
    if per_product:  # one hit per product across both lists
        seen = {seg.product(s) for s in first[0].tolist()}
        keep = np.array([seg.product(s) not in seen for s in rest[0].tolist()], bool)
        rest = rest[0][keep], rest[1][keep]
    take = k - len(first[0])
    return (np.concatenate([first[0], rest[0][:take]]),
            np.concatenate([first[1], rest[1][:take]]))


def from_pool(seg: Segments, found: np.ndarray, scores: np.ndarray, k: int, r: Rerank,
              column: str, named: str | None = None) -> tuple[str | None, Found | None]:
    """The category the first ``r.vote`` of a best-first pool vote for (None: no votes),
    or the one the classifier ``named``, and the pool's first ``k`` of it when the pool
    holds that many."""
    keep = found >= 0
    found, scores = found[keep], scores[keep]
    names = seg.values(column, found.tolist())
    if named is not None:
        won_name = named
    else:
        values = sorted({str(x) for x in names[:r.vote] if x is not None})
        if not values:
            return None, None
        won_name = values[vote(np.array([[values.index(str(x)) if x is not None else -1
                                          for x in names[:r.vote]]]),
                               scores[None, :r.vote])[0]]
    hit = np.flatnonzero([str(x) == won_name for x in names])
    return won_name, (found[hit[:k]], scores[hit[:k]]) if len(hit) >= k else None


def ranked_many(snap: Snapshot, slots: Sequence[int], ks: Sequence[int], r: Rerank,
                column: str | None, classify: Classify | None) -> list[Found]:
    """:func:`ranked` for many items of one snapshot, unfiltered, each item itself left out,
    in one pass over the vectors (query expansion is not batched)."""
    seg, v = snap
    if r.expand:
        raise LookalikeError("query expansion is not batched: use Index.similar")
    rows = np.asarray(slots, np.int64)
    k = min(max(ks), max(v.count - 1, 0))
    if k == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in slots]
    if not r.categorises or column is None:
        found, scores = drop_self(*seg.search_many(v, seg.vectors(rows), k + 1), rows)
        return [(f[:kk], s[:kk]) for f, s, kk in zip(found, scores, ks)]
    pool = min(max(r.vote, VOTE_POOL * k), v.count - 1)
    vectors = seg.vectors(rows)
    found, scores = drop_self(*seg.search_many(v, vectors, pool + 1), rows)
    named = classify(vectors) if classify is not None else [None] * len(rows)
    out = []
    for slot, f, s, kk, name in zip(rows.tolist(), found, scores, ks, named):
        won, answer = from_pool(seg, f, s, kk, r, column, name)
        if won is None:  # nobody voted: the plain list
            answer = f[:kk], s[:kk]
        elif answer is None:  # fewer than k of the winner in the pool
            answer = ranked(snap, seg.vector(slot), kk, None, False, [slot], r, column,
                            classify, known=won)
        out.append(answer)
    return out
