"""The growing segment's index, built in the background: items added to an approximate index
are searched exactly until a few thousand wait, then a thread puts them into a second index of
the sealed one's kind, chunk by chunk, on a private copy it publishes as clones (faiss indexes
may not be searched while they are added to). The thread ends with its Segments, or lets the
interpreter exit once its chunk is done.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import weakref
from typing import Any

import faiss
import numpy as np

from lookalike.search.vector_index import Reranked, make_index, set_search_params
from lookalike.store.parts import Part, kill

#: added vectors searched exactly before the background thread indexes them: a scan of this
#: many bytes costs about as much as a search of the indexed parts
INDEX_AFTER_BYTES = 2 * 2**20
#: vectors the thread indexes in one go: the longest a process that ends waits for it
INDEX_CHUNK = 4096
_closing = threading.Event()  # the interpreter is exiting: indexing threads stop
_indexers: set[tuple[threading.Thread, threading.Event]] = set()


class GrowingIndex:
    """The background-indexing methods of :class:`~lookalike.store.segments.Segments` (its
    base class: they read its view, vectors and locks)."""

    def _maybe_index(self) -> None:
        """Wake the indexing thread when enough added vectors wait (approximate kinds)."""
        v = self.view
        if self.milvus or self.kind == "exact" or \
                (v.n - v.indexed) * self.dim * 4 < INDEX_AFTER_BYTES:
            return
        if self._wake is None:
            self._wake = threading.Event()
            t = threading.Thread(target=_index_growing, args=(weakref.ref(self), self._wake),
                                 name="lookalike-index-added", daemon=True)
            _indexers.add((t, self._wake))
            t.start()
        self._wake.set()

    def index_added(self, limit: int | None = None) -> int:
        """Put the added vectors that wait (at most ``limit``) into the growing segment's index
        and publish it; returns how many. The background thread's work, in chunks; call it to
        finish that work now."""
        total = 0
        while True:
            with self._indexing:
                done = self._index_added(INDEX_CHUNK if limit is None else limit - total)
            total += done
            if not done or (limit is not None and total >= limit):
                return total

    def _index_added(self, limit: int) -> int:
        v = self.view
        done = 0 if self._private is None else self._private.ntotal
        todo = min(limit, v.n - self.n0 - done)
        if todo <= 0:
            return 0
        buf = self._grown
        if self._private is None:
            self._private = self._empty_like_sealed()
        self._private.add(np.ascontiguousarray(buf[done:done + todo]))
        index = faiss.clone_index(self._private)
        kind, params = self.kind, self.params
        set_search_params(index, kind, params)
        hi = self.n0 + done + todo
        searchable = Reranked(index, buf, params["rerank"]) if kind == "ivfpq" else index
        with self._publish:
            cur = self.view
            alive = cur.alive[self.n0:hi]
            part = Part(searchable, self.n0, hi, None, hi - self.n0, buf)
            part = kill(part, [self.n0 + int(i) for i in np.flatnonzero(~alive)],
                         np.ones(hi, bool))
            self.view = dataclasses.replace(cur, parts=(cur.parts[0], part))
        return todo

    def _empty_like_sealed(self) -> Any:
        """An empty index of the sealed one's kind and parameters (IVF: a copy of it emptied,
        which keeps its trained centroids and codebooks)."""
        if self.kind in ("ivf", "ivfpq"):
            inner = self.sealed.index if isinstance(self.sealed, Reranked) else self.sealed
            # a copy that owns its memory (the sealed one's may be memory-mapped), emptied
            empty = faiss.deserialize_index(faiss.serialize_index(inner))
            empty.reset()
            return empty
        return make_index(np.zeros((0, self.dim), np.float32), self.kind, self.params)


def _index_growing(ref: weakref.ref, wake: threading.Event) -> None:
    """The indexing thread of one Segments; ends with it, or when the interpreter exits. One
    OpenMP thread, so that it never takes both cores from the searches."""
    faiss.omp_set_num_threads(1)
    try:
        while not _closing.is_set():
            wake.wait(5.0)
            wake.clear()
            while not _closing.is_set():  # a chunk at a time: an index let go stops it
                seg = ref()
                if seg is None:
                    return
                done = seg.index_added(INDEX_CHUNK)
                del seg
                if not done:
                    break
    finally:
        _indexers.discard((threading.current_thread(), wake))


@atexit.register
def _stop_indexing() -> None:
    """Let the indexing threads finish their chunk before the interpreter goes: a thread
    still inside faiss when it does aborts the process."""
    _closing.set()
    for t, wake in list(_indexers):
        wake.set()
        t.join(timeout=60)
