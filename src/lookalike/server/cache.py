"""Every item's similar list kept, computed ahead, and dropped exactly when a change can alter it.

"Customers also viewed" asks the same question for the same product again and again, and the
answer changes only when the index does. A plain request for an item (no filters, not one per
product, the index's own re-ranking, ``k`` up to :data:`CACHED_K`) is answered from the item's
list of :data:`CACHED_K`: a dictionary lookup, its JSON serialised once per ``k``.
:meth:`SimilarCache.keep_filled` computes the lists of every item from the start, in the
background through the server's batch, and again for the lists a change dropped; a request that
comes before its list is computed computes it itself.

When the index changes (through this server, another process, or a compaction), the next
request compares the new snapshot with the one the lists were made on:

- a compaction or a rebuild renumbers the slots: every list goes;
- otherwise the slots added and removed since are known, and a list goes when one of them could
  enter or leave it: when its similarity to the list's item reaches the list's lowest score
  (which is at or below the similarity of the list's ``CACHED_K``-th nearest item, so it also
  covers the neighbours that voted for its category), less :data:`FLOOR_MARGIN` for rounding,
  or, for a list that is not all of its voted category, when it is of that category (it would
  be ranked before the others).

A list of ``k`` is the first ``k`` of the list of ``CACHED_K`` (the category is voted from a
fixed number of neighbours, and each part of the list is in similarity order), so one list
answers every ``k`` up to the cap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lookalike.api import Hit, Index
from lookalike.store.live import Snapshot

if TYPE_CHECKING:
    from lookalike.server.batcher import SimilarBatcher

log = logging.getLogger(__name__)
CACHED_K = 20
FILL_CHUNK = 64  # lists computed per pass of the batch: a request waits behind at most this
FILL_INTERVAL = 0.25  # seconds between looks for lists to compute
#: how far below a list's lowest score a change still drops it: the similarity recomputed here
#: and the score the search reported differ by rounding (and by float16 storage, < 5e-4)
FLOOR_MARGIN = 2e-3


@dataclass
class _List:
    hits: list[Hit]
    floor: float  # its lowest score: a change below it cannot reach it
    category: str | None  # the category ranked first (None: no re-ranking by category)
    whole: bool  # every hit is of that category (a new one of it competes by score only)
    answers: dict[int, bytes]  # serialised per k


def results(hits: list[Hit]) -> dict[str, Any]:
    """The body of every similar-items answer of the server."""
    return {"results": [{"item_id": h.item_id, "score": round(h.score, 6),
                         "metadata": h.metadata} for h in hits]}


def encode(hits: list[Hit]) -> bytes:
    """:func:`results` as JSON (UTF-8, compact, as Starlette's JSONResponse writes it)."""
    return orjson.dumps(results(hits))


class SimilarCache:
    """Kept similar lists of one index, by slot, for the snapshot they were made on."""

    def __init__(self, cap: int = CACHED_K) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._index: Index | None = None
        self._snap: Snapshot | None = None
        self._lists: dict[int, _List] = {}
        self.hits = self.misses = self.dropped = 0

    def usable(self, k: int, index: Index) -> bool:
        """Whether a plain request for ``k`` results can be answered from lists of this size
        (the index's re-ranking must be one the server's batch runs)."""
        return k <= self.cap and not index.rerank.expand and self.cap >= index.rerank.vote

    def get(self, index: Index, snap: Snapshot, slot: int, k: int) -> bytes | None:
        """The serialised answer for ``slot`` (in ``snap``), if a valid list is kept."""
        with self._lock:
            if not self._follow(index, snap):
                return None
            kept = self._lists.get(slot)
            if kept is None:
                self.misses += 1
                return None
            self.hits += 1
            if k not in kept.answers:
                kept.answers[k] = encode(kept.hits[:k])
            return kept.answers[k]

    def put(self, index: Index, snap: Snapshot, slot: int, hits: list[Hit], k: int) -> bytes:
        """Keep ``hits`` (the list of ``cap`` for ``slot`` in ``snap``); its answer for ``k``."""
        kept = self._make(index, snap, slot, hits)
        with self._lock:
            if self._follow(index, snap):  # (an older snapshot's list is not kept)
                self._lists[slot] = kept
        kept.answers[k] = encode(hits[:k])
        return kept.answers[k]

    def status(self, index: Index) -> dict[str, int]:
        """How many lists are kept, of how many items ``index`` has (for /health)."""
        with self._lock:
            return {"kept": len(self._lists) if index is self._index else 0,
                    "items": len(index)}

    def missing(self, index: Index, snap: Snapshot) -> np.ndarray:
        """The live slots of ``snap`` without a kept list."""
        with self._lock:
            if not self._follow(index, snap):
                return np.zeros(0, np.int64)
            slots = np.flatnonzero(snap.view.alive[:snap.view.n])
            have = np.fromiter(self._lists, np.int64, len(self._lists))
        return slots[~np.isin(slots, have)]

    def keep_filled(self, current: Callable[[], Index], batcher: SimilarBatcher,
                    stop: threading.Event, interval: float = FILL_INTERVAL) -> None:
        """Until ``stop``: compute the list of every live item of ``current()`` that has none,
        :data:`FILL_CHUNK` at a time through ``batcher`` (so requests and this share one
        search thread), whenever the index has lists missing: at start, and after a change
        dropped some. Lists only go when the snapshot does, so once a snapshot has them all
        it is not looked through again."""
        complete: tuple[Index, Any] | None = None  # the index and view that have every list
        while not stop.is_set():
            try:
                index = current()
                snap = index.snapshot()
                if complete is not None and complete[0] is index and complete[1] is snap.view:
                    stop.wait(interval)
                    continue
                todo = self.missing(index, snap) if self.usable(self.cap, index) else []
                if not len(todo):
                    complete = index, snap.view
                for at in range(0, len(todo), FILL_CHUNK):
                    if stop.is_set() or index.snapshot().view is not snap.view:
                        break  # changed meanwhile: look again from the new snapshot
                    slots = todo[at:at + FILL_CHUNK].tolist()
                    hits = batcher.similar_slots_many(index, snap, slots, self.cap,
                                                      index.reranking(None))
                    kept = [self._make(index, snap, s, h) for s, h in zip(slots, hits)]
                    with self._lock:
                        if self._follow(index, snap):
                            self._lists.update(zip(slots, kept))
                if not len(todo):
                    stop.wait(interval)
            except Exception as e:  # noqa: BLE001 (keep serving; requests compute their own)
                log.warning("kept similar lists: %s", e)
                stop.wait(interval)

    def _make(self, index: Index, snap: Snapshot, slot: int, hits: list[Hit]) -> _List:
        column = index.category if index.rerank.categorises else None
        category = hits[0].metadata.get(column) if column and hits else None
        if column and index.rerank.classify and index.classifier is not None:
            # the category the classifier names, which may have no item (yet)
            category = index.classifier.predict(snap.seg.vector(slot))[0]
        whole = bool(column) and len(hits) == self.cap and \
            all(h.metadata.get(column) == category for h in hits)
        floor = min((h.score for h in hits), default=-np.inf) if len(hits) == self.cap \
            else -np.inf  # a list short of the cap (a small index): any addition enters it
        return _List(hits, floor, None if category is None else str(category), whole, {})

    def _follow(self, index: Index, snap: Snapshot) -> bool:
        """Bring the kept lists forward to ``snap``, dropping those a change since can alter
        (lock held). False when ``snap`` is older than the lists (a request that began before
        a change): it is answered without them."""
        old = self._snap
        if old is not None and old.view is snap.view and index is self._index:
            return True
        if old is not None and index is self._index and old.seg is snap.seg \
                and snap.view.seq < old.view.seq:
            return False
        if old is None or index is not self._index or old.seg is not snap.seg:
            self.dropped += len(self._lists)
            self._lists = {}
        elif self._lists:
            self._drop_reached(snap, old)
        self._index, self._snap = index, snap
        return True

    def _drop_reached(self, snap: Snapshot, old: Snapshot) -> None:
        seg, new = snap.seg, snap.view
        n_old = old.view.n
        removed = np.flatnonzero(old.view.alive[:n_old] & ~new.alive[:n_old])
        added = np.arange(n_old, new.n)[new.alive[n_old:new.n]]
        changed = np.concatenate([removed, added]).astype(np.int64)
        if not len(changed):
            return
        slots = np.fromiter(self._lists, np.int64, len(self._lists))
        gone = set(removed.tolist())
        keep_alive = new.alive[slots]
        # similarity of every kept list's item to every changed vector, without BLAS threads
        sims = np.einsum("nd,md->nm", seg.vectors(slots).astype(np.float32),
                         seg.vectors(changed).astype(np.float32))
        column = self._index.category if self._index is not None else None
        added_categories = seg.values(column, added.tolist()) if column and len(added) else []
        for i, slot in enumerate(slots.tolist()):
            kept = self._lists[slot]
            drop = not keep_alive[i] or slot in gone or \
                bool((sims[i] >= kept.floor - FLOOR_MARGIN).any())
            if not drop and kept.category is not None and not kept.whole:
                drop = any(str(c) == kept.category for c in added_categories)
            if drop:
                del self._lists[slot]
                self.dropped += 1
