"""Concurrent similar-by-id queries answered together: one pass over the vectors for many.

An exact scan reads every vector (9,583 × 1,280 float32 = 49 MB for myntra-9k) and is bound by
memory bandwidth, so a query costs about the same alone or in a batch of fifty. Requests wait in
a queue; one thread takes everything queued, runs a single faiss search for all of it, and hands
each request its rows. Nothing waits for a batch to fill: an idle server answers at once, a busy
one batches more.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from ..api import Hit, Index, Snapshot
from ..rerank import Rerank

MAX_BATCH = 256
NO_RERANK = Rerank()


class SimilarBatcher:
    """``similar(index, item_id, k, rerank)`` → the hits of the item's nearest others, best
    first. Requests against different snapshots of a changing index, or asking for another
    re-ranking, are answered separately."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[Index, Snapshot, int, int, Rerank, Future] | None] = \
            queue.Queue()
        self._thread = threading.Thread(target=self._run, name="similar-batcher", daemon=True)
        self._thread.start()

    def similar(self, index: Index, item_id: str, k: int, rerank: Rerank = NO_RERANK
                ) -> list[Hit]:
        """Raises UnknownItemError (at once, in the caller's thread) for an unknown id."""
        snap = index.snapshot()
        return self.similar_slot(index, snap, snap.slot(item_id), k, rerank)

    def similar_slot(self, index: Index, snap: Snapshot, slot: int, k: int,
                     rerank: Rerank = NO_RERANK) -> list[Hit]:
        """The same, for a slot of a snapshot the caller holds."""
        return self.similar_slots_many(index, snap, [slot], k, rerank)[0]

    def similar_slots_many(self, index: Index, snap: Snapshot, slots: list[int], k: int,
                           rerank: Rerank = NO_RERANK) -> list[list[Hit]]:
        """The same for many slots, queued together (they share passes with any requests)."""
        futures: list[Future] = []
        for slot in slots:
            futures.append(Future())
            self._queue.put((index, snap, slot, k, rerank, futures[-1]))
        return [f.result() for f in futures]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            groups: dict[tuple[int, int, Rerank],
                         list[tuple[Index, Snapshot, int, int, Rerank, Future]]] = {}
            for item in batch:
                groups.setdefault((id(item[0]), id(item[1].view), item[4]), []).append(item)
            for group in groups.values():
                try:
                    index, snap = group[0][0], group[0][1]
                    hits = index.similar_slots(snap, [g[2] for g in group],
                                               [g[3] for g in group], group[0][4])
                    for (*_, fut), h in zip(group, hits):
                        fut.set_result(h)
                except BaseException as e:  # noqa: BLE001 (hand every waiter the failure)
                    for *_, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
