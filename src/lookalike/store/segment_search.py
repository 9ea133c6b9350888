"""How a view of a :class:`~lookalike.store.segments.Segments` is searched: every part (the
sealed index, the indexed added items) through its vector index with tombstones and filters as
faiss ID selectors, the added items no index holds yet scanned exactly, the answers merged;
many queries at once for the server's batches; and the whole view as one faiss-like index for
all-items work. :class:`Segments` holds the state; this half reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.search.topk import (
    Where,
    filter_mask,
    one_per_product,
    selector_params,
    top_k,
    where_key,
)
from lookalike.store.parts import Part, View

#: filters whose mask over the built items is kept (each: a byte per item)
MASKS_KEPT = 64


class SegmentSearch:
    """The searching methods of :class:`~lookalike.store.segments.Segments` (its base class:
    they read its parts, tombstones, columns and caches)."""

    def _mask(self, v: View, where: Where | None, n: int) -> np.ndarray | None:
        """Filter mask over slots [0, n) (the built items' columns, then the added ones'). The
        built items' part of the last :data:`MASKS_KEPT` filters is kept (read-only), as the
        same filters come again and again; the added items' part is kept per view."""
        if not where:
            return None
        key = where_key(where)
        with self._masks_lock:
            base = self._base_masks.pop(key, None)
        if base is None:
            base = filter_mask(self.base_items, where, self.attributes)
            base.setflags(write=False)
        with self._masks_lock:
            self._base_masks[key] = base  # (last used at the end)
            while len(self._base_masks) > MASKS_KEPT:
                self._base_masks.pop(next(iter(self._base_masks)))
        if n <= self.n0:
            return base[:n]

        def added() -> np.ndarray:
            frame = self.added_frame(v)
            return filter_mask(frame, where, self.attributes) if len(frame.columns) else \
                np.zeros(len(frame), bool)

        extra = self._cached(f"mask {key}", v, added)
        return np.concatenate([base, extra[:n - self.n0]])

    def search(self, v: View, query: np.ndarray, k: int, *, where: Where | None = None,
               per_product: bool = False, exclude: Sequence[int] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
        """Slots and scores (best first) of the ``k`` nearest alive items to one vector."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise LookalikeError(f"query vector has {q.shape[1]} dimensions, the index "
                                 f"{self.dim}")
        if k < 1:
            raise LookalikeError(f"k must be at least 1, got {k}")
        skip = [self.product(s) for s in exclude] if per_product else []
        mask = self._mask(v, where, v.n)
        found = [self._search_part(v, p, q, k, where, mask, per_product, exclude, skip)
                 for p in v.parts]
        if v.indexed < v.n:
            found.append(self._search_exact(v, q[0], k, mask, per_product, exclude, skip))
        if len(found) == 1:
            return found[0]
        return _merge(found, k, self.product if per_product else None)

    def _search_part(self, v: View, p: Part, q: np.ndarray, k: int, where: Where | None,
                     mask: np.ndarray | None, per_product: bool, exclude: Sequence[int],
                     skip: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        m = None if mask is None else mask[p.lo:p.hi]
        params, available = None, None
        if self.milvus:
            from lookalike.store.milvus import Filter

            if m is not None:
                m = m & v.alive[p.lo:p.hi]
                params = Filter(self.backend.expression(where), float(m.mean()))
        elif p.bits is not None:
            if m is None:
                params, available = selector_params(p.bits, p.hi - p.lo, p.index), p.count
            else:
                m = m & v.alive[p.lo:p.hi]
        rows, scores = top_k(
            p.index, q, k, mask=m, exclude_rows=[s - p.lo for s in exclude if p.lo <= s < p.hi],
            products=self._products_of(v, p.lo, p.hi) if per_product else None,
            embeddings=p.vectors, selector=params, available=available, exclude_products=skip)
        rows = rows + p.lo
        if self.milvus:  # the collection may know items added after this view
            keep = rows < v.n
            rows, scores = rows[keep], scores[keep]
        return rows, scores

    def _products_of(self, v: View, lo: int, hi: int) -> np.ndarray:
        if lo == 0 and hi <= self.n0:
            return self.products()
        return self._cached(f"products-{lo}-{hi}", v, lambda: np.concatenate(
            [self.products()[lo:min(hi, self.n0)],
             np.array([self.product(s) for s in range(max(lo, self.n0), hi)], dtype=object)]))

    def _search_exact(self, v: View, q: np.ndarray, k: int, mask: np.ndarray | None,
                      per_product: bool, exclude: Sequence[int], skip: Sequence[Any]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The added slots no index holds yet, scanned."""
        lo = v.indexed
        ok = v.alive[lo:v.n].copy()
        if mask is not None:
            ok &= mask[lo:v.n]
        for s in exclude:
            if lo <= s < v.n:
                ok[s - lo] = False
        buf = self._grown  # taken after the view: it holds at least its rows
        scores = buf[lo - self.n0:v.n - self.n0] @ q
        scores[~ok] = -np.inf
        if not per_product:
            cand = np.flatnonzero(ok)
            if len(cand) > k:
                cand = cand[np.argpartition(-scores[cand], k - 1)[:k]]
            cand = cand[np.argsort(-scores[cand], kind="stable")]
            return cand + lo, scores[cand]
        order = np.argsort(-scores, kind="stable")[:int(ok.sum())]
        top = order[one_per_product(order + lo, self.product, k, skip)]
        return top + lo, scores[top]

    def search_many(self, v: View, queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots and scores (n, k) of the ``k`` nearest alive items to each query, no filters
        (-1 where fewer exist): many queries in one pass over the vectors."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, v.count))
        slots, scores = [], []
        for p in v.parts:
            params = None if self.milvus or p.bits is None else \
                selector_params(p.bits, p.hi - p.lo, p.index)
            sc, rows = p.index.search(q, k, params=params)
            rows = np.where(rows >= 0, rows + p.lo, -1)
            if self.milvus:
                rows = np.where(rows < v.n, rows, -1)
            slots.append(rows)
            scores.append(sc)
        lo = v.indexed
        if lo < v.n:
            g = q @ self._grown[lo - self.n0:v.n - self.n0].T
            g[:, ~v.alive[lo:v.n]] = -np.inf
            take = min(k, v.n - lo)
            top = np.argpartition(-g, take - 1, axis=1)[:, :take] if take < v.n - lo else \
                np.tile(np.arange(v.n - lo), (len(q), 1))
            slots.append(top + lo)
            scores.append(np.take_along_axis(g, top, axis=1))
        if len(slots) == 1:
            return slots[0], scores[0]
        all_slots, all_scores = np.concatenate(slots, axis=1), np.concatenate(scores, axis=1)
        all_scores = np.where(all_slots >= 0, all_scores, -np.inf)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(all_scores, order, axis=1)
        out_slots = np.take_along_axis(all_slots, order, axis=1)
        out_slots[~np.isfinite(out_scores)] = -1
        return out_slots, out_scores.astype(np.float32)

    def vector_index(self, v: View) -> Any:
        """What whole-catalogue work searches: the sealed index itself when nothing changed,
        otherwise both segments, answering with ``items`` rows."""
        if not self.changed(v) and not self.milvus:
            return self.sealed
        return RowSearch(self, v)


class RowSearch:
    """Both segments of one view, answering ``search`` like a faiss index with ``items``
    rows (unfiltered: filters go through :meth:`Segments.search`)."""

    def __init__(self, seg: Any, v: Any) -> None:
        self.seg, self.view = seg, v
        self.d, self.ntotal = seg.dim, v.count

    def search(self, q: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if params is not None:
            raise LookalikeError("a changed index takes no search parameters here; filter "
                                 "with Index.search_vector(where=...)")
        slots, scores = self.seg.search_many(self.view, q, k)
        rows = np.where(slots >= 0, self.seg.row_of_slot(self.view)[np.maximum(slots, 0)], -1)
        if rows.shape[1] < k:  # fewer items than k: pad like faiss
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, rows


def _merge(found: Sequence[tuple[np.ndarray, np.ndarray]], k: int, product: Any
           ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several best-first lists (ties: the earlier list first); with
    ``product(slot)``, one per product."""
    rows = np.concatenate([r for r, _ in found]).astype(np.int64)
    scores = np.concatenate([s for _, s in found]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    order = order[:k] if product is None else order[one_per_product(rows[order], product, k)]
    return rows[order], scores[order]


