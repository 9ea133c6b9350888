"""An opened index in memory that changes while it is searched.

The vectors of the built folder stay in the vector index they were built into, the *sealed*
segment (exact, HNSW, IVF or IVF-PQ), which is never modified. Items added since go to a
*growing* segment that is searched exactly; removed or replaced items become tombstones that
searches skip (a faiss ID selector on the sealed segment). A search merges the best of both.
Compaction folds everything into a new sealed segment. Milvus keeps writes cheap the same
way (growing segments searched by brute force, sealed ones indexed); here it means an add costs
an append at any size, opening a folder never re-trains or re-inserts into a graph, and no
search ever waits for a change (faiss indexes may not be searched while they are added to).

Every item has a *slot*: built items 0..n0-1 in folder order, added items after them in
order; a slot is never reused. A :class:`View` is what one search sees: the slots that existed
and which of them were alive when it began. A writer (one at a time: the caller serialises
them) appends, then publishes a new View in one assignment; readers take the View once and
never wait. With the Milvus backend the collection holds every vector and applies deletes
itself, so all slots are searched through it.

Pure in-memory work: reading and writing the folder is store.py's and journal.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .catalog import ITEM_ID, PRODUCT_ID
from .errors import LookalikeError, UnknownItemError
from .journal import Cursor, Entry
from .search import Where, filter_mask, selector_params, top_k


@dataclass(frozen=True, eq=False)
class View:
    """The state one search sees. ``alive`` is never changed once published."""

    seq: int  # the last journal entry applied
    n: int  # slots: built and added
    alive: np.ndarray  # bool per slot
    count: int  # alive slots
    sealed_bits: np.ndarray | None  # packed alive bits of the sealed slots; None: all alive
    sealed_count: int  # alive sealed slots


def plain(v: Any) -> Any:
    """A table value as plain Python (NaN, NA → None; numpy scalars → Python ones)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


class Segments:
    """The sealed vector index of a built folder, the items added since, the tombstones."""

    def __init__(self, path: Path, manifest: dict[str, Any], items: pd.DataFrame,
                 vectors: Any, sealed: Any, backend: Any = None, generation: Any = None,
                 storage: np.dtype | None = None) -> None:
        self.path, self.manifest, self.generation = path, manifest, generation
        self.attributes: list[str] = list(manifest["catalog"]["attributes"])
        self.dim: int = int(manifest["embedder"]["dim"])
        self.storage = np.dtype(storage or getattr(vectors, "dtype", np.float32))
        self.base_items = items.reset_index(drop=True)
        self.base_vectors = vectors  # memory-mapped (Milvus: read from the collection)
        self.sealed = sealed  # answers search(q, k, params) with slots
        self.backend = backend
        self.n0 = len(self.base_items)
        self.ids: list[str] = self.base_items[ITEM_ID].astype(str).tolist()
        self.slot_of: dict[str, int] = {i: s for s, i in enumerate(self.ids)}
        self.records: list[dict[str, Any]] = []  # added slots' item records
        self.applied = 0  # journal entries applied
        self.cursor = Cursor()  # how far the journal was read (by whoever applies: one at a time)
        self._grown = np.zeros((0, self.dim), np.float32)  # added slots' vectors (Milvus: none)
        self._columns: dict[str, list[Any]] = {}
        self._products: np.ndarray | None = None
        self._cache: dict[tuple[str, int], Any] = {}  # per-view derived tables
        alive = np.ones(self.n0, bool)
        alive.setflags(write=False)
        self.view = View(0, self.n0, alive, self.n0, None, self.n0)

    @property
    def milvus(self) -> bool:
        return self.backend is not None

    @property
    def seq(self) -> int:
        return self.view.seq

    def sealed_n(self, v: View) -> int:
        """Slots the sealed segment answers for: the built ones, or with Milvus all."""
        return v.n if self.milvus else self.n0

    def changed(self, v: View) -> bool:
        return v.n != self.n0 or v.count != self.n0

    # --- writing (the caller serialises writers) -------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed journal entries, in order, and publish the new view."""
        if not entries:
            return
        v = self.view
        touched: dict[str, int | None] = {}  # id → its slot after these entries (None: gone)
        dead: list[int] = []
        recs: list[dict[str, Any]] = []
        vecs: list[np.ndarray] = []
        n = v.n
        for e in entries:
            if e.change["op"] == "add":
                if e.vectors is not None:
                    vecs.append(np.asarray(e.vectors, self.storage).astype(np.float32))
                for rec in e.records:
                    item_id = str(rec[ITEM_ID])
                    old = touched[item_id] if item_id in touched else self.slot_of.get(item_id)
                    if old is not None:
                        dead.append(old)  # replaced: the new version takes a new slot
                    touched[item_id] = n
                    recs.append(rec)
                    n += 1
            else:
                for item_id in e.item_ids:
                    old = touched[item_id] if item_id in touched else self.slot_of.get(item_id)
                    if old is not None:
                        dead.append(old)
                        touched[item_id] = None
        # data first, then the ids that point at it, then the view; deleted ids last
        if recs:
            if not self.milvus:
                self._append_vectors(np.concatenate(vecs) if vecs else
                                     np.zeros((0, self.dim), np.float32), len(recs))
            self.records.extend(recs)
            self.ids.extend(str(r[ITEM_ID]) for r in recs)
            for item_id, slot in touched.items():
                if slot is not None:
                    self.slot_of[item_id] = slot
        alive = np.ones(n, bool)
        alive[:v.n] = v.alive
        alive[dead] = False
        alive.setflags(write=False)
        sealed = self.sealed_n(v)
        bits, sealed_count = v.sealed_bits, v.sealed_count
        gone = [s for s in dead if s < sealed and v.alive[s]] if not self.milvus else []
        if gone:
            bits = np.packbits(np.ones(sealed, bool), bitorder="little") if bits is None \
                else bits.copy()
            for s in gone:
                bits[s >> 3] &= ~np.uint8(1 << (s & 7))
            bits.setflags(write=False)
            sealed_count -= len(set(gone))
        count = v.count + len(recs) - len(dead)  # a slot dies at most once
        if self.milvus:
            sealed_count = count
        self.view = View(entries[-1].seq, n, alive, count, bits, sealed_count)
        self.applied += len(entries)
        for item_id, slot in touched.items():
            if slot is None and item_id in self.slot_of:
                del self.slot_of[item_id]

    def _append_vectors(self, vectors: np.ndarray, rows: int) -> None:
        if len(vectors) != rows:
            raise LookalikeError(f"{rows} added items but {len(vectors)} vectors")
        used = len(self.records)
        buf = self._grown
        if used + rows > len(buf):  # a new buffer; searches keep the one they took
            bigger = np.zeros((max(2 * len(buf), used + rows, 1024), self.dim), np.float32)
            bigger[:used] = buf[:used]
            bigger[used:used + rows] = vectors
            self._grown = bigger
        else:
            buf[used:used + rows] = vectors

    # --- reading ---------------------------------------------------------------------------

    def slot(self, item_id: object, v: View) -> int:
        """The slot of ``item_id`` as ``v`` sees it (an id added after ``v`` resolves to its
        newest slot). Raises UnknownItemError."""
        s = self.slot_of.get(str(item_id))
        if s is None or (s < v.n and not v.alive[s]):
            raise UnknownItemError(f"unknown item id {item_id!r} (the index has {v.count} "
                                   "items)")
        return s

    def vector(self, slot: int) -> np.ndarray:
        if self.milvus:
            return self.backend.vectors([self.ids[slot]])[0]
        if slot < self.n0:
            return np.asarray(self.base_vectors[slot], np.float32)
        return self._grown[slot - self.n0].copy()

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        if self.milvus:
            return self.backend.vectors([self.ids[s] for s in slots])
        out = np.empty((len(slots), self.dim), np.float32)
        base = slots < self.n0
        if base.any():
            out[base] = self.base_vectors[slots[base]]
        if (~base).any():
            out[~base] = self._grown[slots[~base] - self.n0]
        return out

    def metadata(self, slot: int, columns: Sequence[str]) -> dict[str, Any]:
        if slot >= self.n0:
            rec = self.records[slot - self.n0]
            return {c: plain(rec.get(c)) for c in columns}
        out = {}
        for c in columns:
            if c not in self._columns:
                self._columns[c] = self.base_items[c].tolist() if c in self.base_items.columns \
                    else [None] * self.n0
            out[c] = plain(self._columns[c][slot])
        return out

    def product(self, slot: int) -> Any:
        if slot >= self.n0:
            p = self.records[slot - self.n0].get(PRODUCT_ID)
            return None if p is None else str(p)
        return self.products()[slot]

    def products(self) -> np.ndarray:
        if self._products is None:
            self._products = self.base_items[PRODUCT_ID].astype("string").to_numpy(dtype=object)
        return self._products

    def _cached(self, name: str, v: View, make: Any) -> Any:
        key = (name, id(v))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not v:
            if len(self._cache) > 16:
                self._cache.clear()
            hit = (v, make())
            self._cache[key] = hit
        return hit[1]

    def added_frame(self, v: View) -> pd.DataFrame:
        """The records of the slots added up to ``v``, as a table."""
        m = v.n - self.n0
        return self._cached("added", v, lambda: pd.DataFrame(self.records[:m]))

    def _mask(self, v: View, where: Where | None, n: int) -> np.ndarray | None:
        """Filter mask over slots [0, n) (the built items' columns, then the added ones')."""
        if not where:
            return None
        base = filter_mask(self.base_items, where, self.attributes)
        if n <= self.n0:
            return base[:n]
        added = self.added_frame(v)
        extra = filter_mask(added, where, self.attributes) if len(added.columns) else \
            np.zeros(len(added), bool)
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
        excluded_products = [self.product(s) for s in exclude] if per_product else []
        ns = self.sealed_n(v)
        mask = self._mask(v, where, v.n)
        sealed_mask = None if mask is None else mask[:ns]
        params, available = None, None
        if self.milvus:
            from .milvus import Filter

            if sealed_mask is not None:
                sealed_mask = sealed_mask & v.alive[:ns]
                params = Filter(self.backend.expression(where), float(sealed_mask.mean()))
        elif v.sealed_bits is not None:
            if sealed_mask is None:
                params, available = selector_params(v.sealed_bits, ns, self.sealed), \
                    v.sealed_count
            else:
                sealed_mask = sealed_mask & v.alive[:ns]
        rows, scores = top_k(
            self.sealed, q, k, mask=sealed_mask, exclude_rows=[s for s in exclude if s < ns],
            products=self.products() if per_product and not self.milvus else
            (self._all_products(v) if per_product else None),
            embeddings=None if self.milvus else self.base_vectors, selector=params,
            available=available, exclude_products=excluded_products)
        if self.milvus:
            keep = rows < v.n
            return rows[keep], scores[keep]
        if v.n == self.n0:
            return rows, scores
        g_rows, g_scores = self._search_added(v, q[0], k, None if mask is None else mask[ns:],
                                              per_product, exclude, excluded_products)
        return _merge(rows, scores, g_rows, g_scores, k,
                      (lambda s: self.product(s)) if per_product else None)

    def _all_products(self, v: View) -> np.ndarray:
        return self._cached("products", v, lambda: np.concatenate(
            [self.products(), np.array([self.product(s) for s in range(self.n0, v.n)],
                                       dtype=object)]))

    def _search_added(self, v: View, q: np.ndarray, k: int, mask: np.ndarray | None,
                      per_product: bool, exclude: Sequence[int], excluded_products: Sequence[Any]
                      ) -> tuple[np.ndarray, np.ndarray]:
        m = v.n - self.n0
        ok = v.alive[self.n0:v.n].copy()
        if mask is not None:
            ok &= mask
        for s in exclude:
            if self.n0 <= s < v.n:
                ok[s - self.n0] = False
        buf = self._grown  # taken after the view: it holds at least its m rows
        scores = buf[:m] @ q
        scores[~ok] = -np.inf
        count = int(ok.sum())
        if not per_product:
            cand = np.flatnonzero(ok)
            if len(cand) > k:
                cand = cand[np.argpartition(-scores[cand], k - 1)[:k]]
            cand = cand[np.argsort(-scores[cand], kind="stable")]
            return cand + self.n0, scores[cand]
        order = np.argsort(-scores, kind="stable")[:count]
        top = order[_one_per_product(order + self.n0, self.product, k, excluded_products)]
        return top + self.n0, scores[top]

    def search_many(self, v: View, queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots and scores (n, k) of the ``k`` nearest alive items to each query, no filters
        (-1 where fewer exist): many queries in one pass over the vectors."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, v.count))
        params = None
        if not self.milvus and v.sealed_bits is not None:
            params = selector_params(v.sealed_bits, self.n0, self.sealed)
        scores, slots = self.sealed.search(q, k, params=params)
        if self.milvus:
            slots = np.where(slots < v.n, slots, -1)
            return slots, scores
        m = v.n - self.n0
        if m == 0:
            return slots, scores
        ok = v.alive[self.n0:v.n]
        g = q @ self._grown[:m].T
        g[:, ~ok] = -np.inf
        take = min(k, m)
        top = np.argpartition(-g, take - 1, axis=1)[:, :take] if take < m else \
            np.tile(np.arange(m), (len(q), 1))
        g_scores = np.take_along_axis(g, top, axis=1)
        all_scores = np.concatenate([scores, g_scores], axis=1)
        all_slots = np.concatenate([slots, top + self.n0], axis=1)
        all_scores = np.where(all_slots >= 0, all_scores, -np.inf)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(all_scores, order, axis=1)
        out_slots = np.take_along_axis(all_slots, order, axis=1)
        out_slots[~np.isfinite(out_scores)] = -1
        return out_slots, out_scores.astype(np.float32)

    # --- the items as one table, for whole-catalogue work ----------------------------------

    def alive_slots(self, v: View) -> np.ndarray:
        return self._cached("slots", v, lambda: np.flatnonzero(v.alive))

    def row_of_slot(self, v: View) -> np.ndarray:
        def make() -> np.ndarray:
            rows = np.full(v.n, -1, np.int64)
            rows[self.alive_slots(v)] = np.arange(v.count)
            return rows
        return self._cached("rows", v, make)

    def items(self, v: View) -> pd.DataFrame:
        """The alive items in slot order (built ones, then added ones), rows numbered from 0."""
        if not self.changed(v):
            return self.base_items

        def make() -> pd.DataFrame:
            slots = self.alive_slots(v)
            parts = [self.base_items.iloc[slots[slots < self.n0]]]
            added = slots[slots >= self.n0] - self.n0
            if len(added):
                parts.append(self.added_frame(v).iloc[added])
            return pd.concat(parts, ignore_index=True) if len(parts) > 1 else \
                parts[0].reset_index(drop=True)
        return self._cached("items", v, make)

    def embeddings(self, v: View) -> Any:
        """The alive items' vectors in the folder's storage type, row i = ``items`` row i (the
        memory-mapped file itself when nothing changed)."""
        if not self.changed(v) and not self.milvus:
            return self.base_vectors
        if self.milvus:
            from .milvus import MilvusVectors

            return self._cached("emb", v, lambda: MilvusVectors(
                self.backend, [self.ids[s] for s in self.alive_slots(v)]))

        def make() -> np.ndarray:
            slots = self.alive_slots(v)
            base, added = slots[slots < self.n0], slots[slots >= self.n0] - self.n0
            return np.concatenate([np.asarray(self.base_vectors[base]),
                                   self._grown[added].astype(self.storage)])
        return self._cached("emb", v, make)

    def vector_index(self, v: View) -> Any:
        """What whole-catalogue work searches: the sealed index itself when nothing changed,
        otherwise both segments, answering with ``items`` rows."""
        if not self.changed(v) and not self.milvus:
            return self.sealed
        return RowSearch(self, v)


class RowSearch:
    """Both segments of one view, answering ``search`` like a faiss index with ``items``
    rows (unfiltered: filters go through :meth:`Segments.search`)."""

    def __init__(self, seg: Segments, v: View) -> None:
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


def _merge(a_rows: np.ndarray, a_scores: np.ndarray, b_rows: np.ndarray, b_scores: np.ndarray,
           k: int, product: Any) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two best-first lists (ties: the first list first); with
    ``product(slot)``, one per product."""
    rows = np.concatenate([a_rows, b_rows]).astype(np.int64)
    scores = np.concatenate([a_scores, b_scores]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    order = order[:k] if product is None else order[_one_per_product(rows[order], product, k)]
    return rows[order], scores[order]


def _one_per_product(slots: np.ndarray, product: Any, k: int, skip: Sequence[Any] = ()
                     ) -> np.ndarray:
    """Positions in best-first ``slots`` of the first ``k`` whose product is new (and not in
    ``skip``)."""
    out: list[int] = []
    seen = set(skip)
    for i, s in enumerate(slots.tolist()):
        p = product(s)
        if p in seen:
            continue
        seen.add(p)
        out.append(i)
        if len(out) == k:
            break
    return np.asarray(out, np.int64)
