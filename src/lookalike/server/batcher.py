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
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any

from lookalike.api import Hit, Index
from lookalike.errors import BusyError
from lookalike.search.rerank import Rerank
from lookalike.store.live import Snapshot

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
        stop(self._queue, self._thread)

    def _run(self) -> None:
        serve_batches(self._queue, self.max_batch,
                      key=lambda item: (id(item[0]), id(item[1].view), item[4]),
                      answer=lambda group: group[0][0].similar_slots(
                          group[0][1], [g[2] for g in group], [g[3] for g in group],
                          group[0][4]))


def serve_batches(waiting: queue.Queue, limit: int, *, key: Callable[[Any], Hashable],
                  answer: Callable[[list[Any]], Sequence[Any]],
                  size: Callable[[Any], int] = lambda request: 1) -> None:
    """The loop of a batching thread, until a None is queued: wait for a request (a tuple whose
    last element is its Future), take everything queued behind it up to ``limit`` (counted by
    ``size``), and answer each group of the same ``key`` with one ``answer(group)`` call, a
    result per request; a failure goes to every request of the group. At the stop, requests
    still queued are failed (BusyError), never left waiting."""
    stopping = False
    while not stopping:
        first = waiting.get()
        if first is None:
            break
        batch, taken = [first], size(first)
        while taken < limit:
            try:
                item = waiting.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stop after this batch (never put back: the queue may be full)
                stopping = True
                break
            batch.append(item)
            taken += size(item)
        _answer(batch, key, answer)
    _turn_away(waiting)


def _answer(batch: list[Any], key: Callable[[Any], Hashable],
            answer: Callable[[list[Any]], Sequence[Any]]) -> None:
    groups: dict[Hashable, list[Any]] = {}
    for item in batch:
        groups.setdefault(key(item), []).append(item)
    for group in groups.values():
        try:
            for item, result in zip(group, answer(group)):
                item[-1].set_result(result)
        except BaseException as e:  # noqa: BLE001 (hand every waiter the failure)
            for item in group:
                if not item[-1].done():
                    item[-1].set_exception(e)


def _turn_away(waiting: queue.Queue) -> None:
    """Fail every request still queued: the batching thread is stopping."""
    while True:
        try:
            item = waiting.get_nowait()
        except queue.Empty:
            return
        if item is not None and not item[-1].done():
            item[-1].set_exception(BusyError("the server is stopping; try again in a moment"))


def stop(waiting: queue.Queue, thread: threading.Thread) -> None:
    """Ask a batching thread to stop (without blocking on a full queue) and wait for it."""
    try:
        waiting.put(None, timeout=5)
    except queue.Full:  # the thread is stuck in a model call: it sees the marker later
        pass
    thread.join(timeout=5)
