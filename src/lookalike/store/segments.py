"""An opened index in memory that changes while it is searched.

The vectors of the built folder stay in the vector index they were built into, the *sealed*
segment (exact, HNSW, IVF or IVF-PQ), which is never modified. Items added since form a
*growing* segment: searched exactly at first, and for an approximate index put into a second
index of the same kind by a background thread once a few thousand of them wait (faiss indexes may
not be searched while they are added to, so the thread adds to a private copy and publishes
clones). Removed or replaced items become tombstones that searches skip (faiss ID selectors).
A search merges the answers of every part. Compaction folds everything into a new sealed
segment. Milvus keeps writes cheap the same way (growing segments searched by brute force, then
indexed; sealed ones indexed); here it means an add costs an append at any size, opening a
folder never re-trains or re-inserts into the built graph, and no search ever waits for a
change.

Every item has a *slot*: built items 0..n0-1 in folder order, added items after them in
order; a slot is never reused. A :class:`View` is what one search sees: the slots that existed,
which of them were alive, and the indexed parts, when it began. A writer (one at a time: the
caller serialises them) appends, then publishes a new View in one assignment; readers take the
View once and never wait. With the Milvus backend the collection holds every vector and applies
deletes itself, so all slots are searched through it.

Pure in-memory work: reading and writing the folder is folder.py's and journal.py's.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError, UnknownItemError
from lookalike.ingest.catalog import ITEM_ID, PRODUCT_ID
from lookalike.search.vector_index import stored_kind
from lookalike.store.growing import GrowingIndex
from lookalike.store.journal import Cursor, Entry
from lookalike.store.parts import Part, View, kill
from lookalike.store.segment_search import SegmentSearch


def plain(v: Any) -> Any:
    """A table value as plain Python (NaN, NA → None; numpy scalars → Python ones)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


class Segments(SegmentSearch, GrowingIndex):
    """The sealed vector index of a built folder, the items added since, the tombstones."""

    def __init__(self, path: Path, manifest: dict[str, Any], items: pd.DataFrame,
                 vectors: Any, sealed: Any, backend: Any = None, generation: Any = None,
                 storage: np.dtype | None = None) -> None:
        self.path, self.manifest, self.generation = path, manifest, generation
        self.attributes: list[str] = list(manifest["catalog"]["attributes"])
        self.dim: int = int(manifest["embedder"]["dim"])
        self.kind, self.params = stored_kind(manifest)
        self.storage = np.dtype(storage or getattr(vectors, "dtype", np.float32))
        self.base_items = items.reset_index(drop=True)
        self.base_vectors = vectors  # memory-mapped (Milvus: read from the collection)
        self.backend = backend
        self.n0 = len(self.base_items)
        self.ids: list[str] = self.base_items[ITEM_ID].astype(str).tolist()
        self.slot_of: dict[str, int] = dict(zip(self.ids, range(self.n0)))
        self.records: list[dict[str, Any]] = []  # added slots' item records
        self.applied = 0  # journal entries applied
        self.cursor = Cursor()  # how far the journal was read (by whoever applies: one at a time)
        self._grown = np.zeros((0, self.dim), np.float32)  # added slots' vectors (Milvus: none)
        self._columns: dict[str, list[Any]] = {}
        self._products: np.ndarray | None = None
        self._cache: dict[tuple[str, int], Any] = {}  # per-view derived tables
        self._base_masks: dict[tuple, np.ndarray] = {}  # filters over the built items, LRU
        self._masks_lock = threading.Lock()
        self._publish = threading.Lock()  # writers and the indexing thread publish in turn
        self._private: Any = None  # the growing segment's index, touched under _indexing only
        self._indexing = threading.Lock()
        self._wake: threading.Event | None = None
        alive = np.ones(self.n0, bool)
        alive.setflags(write=False)
        sealed = Part(sealed, 0, self.n0, None, self.n0,
                      None if backend is not None else vectors)
        self.view = View(0, self.n0, alive, self.n0, (sealed,))

    @property
    def milvus(self) -> bool:
        return self.backend is not None

    @property
    def sealed(self) -> Any:
        """The built vector index (or the Milvus search): it answers search(q, k, params)
        with slots."""
        return self.view.parts[0].index

    @sealed.setter
    def sealed(self, index: Any) -> None:
        self.view = dataclasses.replace(self.view, parts=(self.view.parts[0]._replace(
            index=index),) + self.view.parts[1:])

    def changed(self, v: View) -> bool:
        return v.n != self.n0 or v.count != self.n0

    # --- writing (the caller serialises writers) -------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed journal entries, in order, and publish the new view."""
        if not entries:
            return
        n = self.view.n  # only writers add slots, and they come one at a time
        touched: dict[str, int | None] = {}  # id → its slot after these entries (None: gone)
        dead: list[int] = []
        recs: list[dict[str, Any]] = []
        vecs: list[np.ndarray] = []

        def current(item_id: str) -> int | None:
            return touched[item_id] if item_id in touched else self.slot_of.get(item_id)

        for e in entries:
            if e.change["op"] == "add":
                if e.vectors is not None:
                    vecs.append(np.asarray(e.vectors, self.storage).astype(np.float32))
                for rec in e.records:
                    item_id = str(rec[ITEM_ID])
                    old = current(item_id)
                    if old is not None:
                        dead.append(old)  # replaced: the new version takes a new slot
                    touched[item_id] = n
                    recs.append(rec)
                    n += 1
            else:
                for item_id in e.item_ids:
                    old = current(item_id)
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
        with self._publish:
            v = self.view  # the indexing thread may have published since
            alive = np.ones(n, bool)
            alive[:v.n] = v.alive
            alive[dead] = False
            alive.setflags(write=False)
            count = v.count + len(recs) - len(dead)  # a slot dies at most once
            if self.milvus:  # the collection covers every slot and removes items itself
                parts = (v.parts[0]._replace(hi=n, count=count),)
            else:
                parts = tuple(kill(p, dead, v.alive) for p in v.parts)
            self.view = View(entries[-1].seq, n, alive, count, parts)
        self.applied += len(entries)
        for item_id, slot in touched.items():
            if slot is None and item_id in self.slot_of:
                del self.slot_of[item_id]
        self._maybe_index()

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
        return {c: plain(self._column(c)[slot]) for c in columns}

    def values(self, column: str, slots: Sequence[int]) -> list[Any]:
        """One column's values of many slots (built or added), as plain values."""
        base = self._column(column)
        return [plain(base[s]) if s < self.n0 else plain(self.records[s - self.n0].get(column))
                for s in slots]

    def _column(self, c: str) -> list[Any]:
        """A built column as a list, made once (metadata lookups by slot are then cheap)."""
        if c not in self._columns:
            self._columns[c] = self.base_items[c].tolist() if c in self.base_items.columns \
                else [None] * self.n0
        return self._columns[c]

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
            from lookalike.store.milvus import MilvusVectors

            return self._cached("emb", v, lambda: MilvusVectors(
                self.backend, [self.ids[s] for s in self.alive_slots(v)]))

        def make() -> np.ndarray:
            slots = self.alive_slots(v)
            base, added = slots[slots < self.n0], slots[slots >= self.n0] - self.n0
            return np.concatenate([np.asarray(self.base_vectors[base]),
                                   self._grown[added].astype(self.storage)])
        return self._cached("emb", v, make)
