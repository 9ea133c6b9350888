"""An index folder open in this process while it changes: its current segments, the writer
lock this process's writers share, the one path by which a change is committed (journal
first, then applied here), catching up with other processes' changes, and compaction.

``Index`` (lookalike.api) asks this object for a :class:`Snapshot` per request and hands it
what ``add``/``delete`` prepared; searches never wait for a writer.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from lookalike.errors import ItemExistsError, UnknownItemError
from lookalike.ingest.catalog import IMAGE_PATH, ITEM_ID
from lookalike.store import journal
from lookalike.store.changes import Prepared, UpdateSummary, keep_photo
from lookalike.store.compaction import compact
from lookalike.store.folder import catch_up, generation, now, open_segments
from lookalike.store.parts import View
from lookalike.store.segments import Segments

log = logging.getLogger(__name__)

#: Auto-compaction: an add or delete folds the journal in (in the background) once it holds
#: this many entries (opening replays every entry) ...
COMPACT_ENTRIES = 10_000
#: ... or once the items added and removed since the build pass this share of the built items
#: (a search then steps over the removed ones and searches the added ones apart) and this count.
COMPACT_SHARE = 0.10
COMPACT_MIN_ITEMS = 1_000


class Snapshot(NamedTuple):
    """The state one request reads from start to end: the segments and their view."""

    seg: Segments
    view: View

    def slot(self, item_id: object) -> int:
        """The item's slot; an id the build skipped is told why."""
        try:
            return self.seg.slot(item_id, self.view)
        except UnknownItemError:
            skipped = {s["item_id"]: s["reason"] for s in self.seg.manifest.get("skipped", [])}
            if str(item_id) in skipped:
                raise UnknownItemError(f"item {item_id!r} was skipped when the index was built: "
                                       f"{skipped[str(item_id)]}") from None
            raise


class LiveFolder:
    """The folder at ``path`` as this process sees it, kept up to date."""

    def __init__(self, path: str | os.PathLike, auto_compact: bool = True) -> None:
        self.seg = open_segments(path)
        self.path = self.seg.path
        #: fold the journal in on its own once it passes the COMPACT_* thresholds
        self.auto_compact = auto_compact
        self._write = threading.Lock()  # this process's writers, one at a time
        self._compactor: threading.Thread | None = None

    def snapshot(self) -> Snapshot:
        seg = self.seg
        return Snapshot(seg, seg.view)

    def holds(self, item_id: object) -> bool:
        seg = self.seg
        try:  # (not Snapshot.slot: a miss needs no message, and an add asks once per item)
            seg.slot(item_id, seg.view)
        except UnknownItemError:
            return False
        return True

    # --- changing --------------------------------------------------------------------------

    def add(self, p: Prepared, replace: bool) -> UpdateSummary:
        """Commit prepared additions (both locks held while the journal is appended)."""
        out = p.summary
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg = self.seg
            for r in p.records:
                (out.replaced if self.holds(r[ITEM_ID]) else out.added).append(r[ITEM_ID])
            if out.replaced and not replace:
                raise ItemExistsError(f"item(s) {', '.join(map(repr, out.replaced[:20]))} "
                                      "already exist; delete them first")
            for rec, data in zip(p.records, p.photos):
                if data is not None:  # under the lock: a compaction's swap carries it along
                    rec[IMAGE_PATH] = str(keep_photo(self.path, rec[ITEM_ID], data))
            change = {"op": "add", "items": p.records, "time": now(),
                      "counts": {"added": len(out.added), "replaced": len(out.replaced)}}
            if seg.backend is None:
                out.change = self._commit(seg, change, np.asarray(p.vectors, seg.storage))
            else:  # the collection first: an id the items table lacks is never returned
                seg.backend.upsert(pd.DataFrame(p.records), np.asarray(p.vectors, np.float32))
                out.change = self._commit(seg, change, None)
        self.maybe_compact()
        return out

    def delete(self, item_ids: list[str]) -> UpdateSummary:
        """Remove items by id, all or none: an unknown id changes nothing and is named."""
        out = UpdateSummary(removed=item_ids)
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg = self.seg
            unknown = [i for i in item_ids if not self.holds(i)]
            if unknown:
                raise UnknownItemError(
                    f"index {self.path} has no item(s) {', '.join(unknown[:20])}"
                    + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
                    + "; nothing was removed")
            if not item_ids:
                return out
            change = {"op": "delete", "item_ids": item_ids, "time": now(),
                      "counts": {"removed": len(item_ids)}}
            # the entry first, then Milvus: a vector a crash leaves behind is never returned
            out.change = self._commit(seg, change, None)
            if seg.backend is not None:
                seg.backend.delete(item_ids)
        self.maybe_compact()
        return out

    def _commit(self, seg: Segments, change: dict[str, Any], vectors: np.ndarray | None) -> int:
        """Append ``change`` to the journal (both locks held) and apply it here; returns its
        number."""
        cursor = journal.append(self.path, seg.cursor, change, vectors)
        seg.apply([journal.Entry(cursor.seq, change, vectors)])
        seg.cursor = cursor
        return cursor.seq

    # --- following the folder --------------------------------------------------------------

    def refresh(self) -> int:
        """Apply changes that other processes made to the folder since this one last looked
        (a replaced folder is read again). Cheap when there are none. Returns the entries
        applied."""
        seg = self.seg
        gen = generation(self.path)
        if gen is None:  # mid-swap: the next call will see the new folder
            return 0
        if gen != seg.generation:
            new = open_segments(self.path)  # outside the lock: writers keep going meanwhile
            with self._write:
                if self.seg is seg:
                    self.seg = new
                return self._apply_new(locked=False) + new.applied
        if not journal.has_news(self.path, seg.cursor):
            return 0
        with self._write:
            return self._apply_new(locked=False)

    def _apply_new(self, locked: bool) -> int:
        """Read and apply the changes after the last one applied (this process's writer lock
        held; without the folder's lock the folder is checked not to have been replaced while
        they were read: they could be the new folder's)."""
        seg = self.seg
        gen = seg.generation
        check: Callable[[], bool] | None = None if locked else \
            (lambda: generation(self.path) == gen)
        return catch_up(seg, check)

    def _refresh_locked(self) -> None:
        """Bring this process up to date with the folder (both locks held: nobody changes it
        now), so that the next change follows the last one."""
        if generation(self.path) != self.seg.generation:
            self.seg = open_segments(self.path)
        elif journal.has_news(self.path, self.seg.cursor):
            self._apply_new(locked=True)

    # --- compaction ------------------------------------------------------------------------

    def compact(self) -> int:
        """Fold the journal into a new build of the folder, then read it again; returns the
        number of changes folded in."""
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg, v = self.snapshot()
        n = compact(seg, v)
        self.refresh()
        return n

    @property
    def compacting(self) -> bool:
        return self._compactor is not None and self._compactor.is_alive()

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        t = self._compactor
        if t is not None:
            t.join(timeout)

    def maybe_compact(self) -> None:
        """Start a compaction in the background once the journal passes the thresholds."""
        if not self.auto_compact or self.compacting:
            return
        seg, v = self.snapshot()
        changed = (v.n - seg.n0) + (v.n - v.count)
        if seg.applied < COMPACT_ENTRIES and \
                changed < max(COMPACT_MIN_ITEMS, COMPACT_SHARE * seg.n0):
            return

        def run() -> None:
            try:
                n = self.compact()
                log.info("index %s: %d change(s) folded in", self.path, n)
            except Exception as e:  # noqa: BLE001 (the changes stay in the journal)
                log.warning("index %s: compaction failed, the journal is kept: %s", self.path, e)

        # not a daemon: a process that ends waits for it rather than leave a half-written copy
        self._compactor = threading.Thread(target=run, name="lookalike-compact")
        self._compactor.start()
