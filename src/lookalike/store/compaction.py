"""Compaction: the journal folded into a fresh copy of the index folder (same items and vectors,
the approximate index rebuilt and its recall measured again), swapped in under the writers'
lock; what other writers append meanwhile is carried over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import IndexFormatError
from lookalike.ingest.catalog import IMAGE_PATH, ITEM_ID
from lookalike.ingest.checks import column_kinds, shown, value_problem
from lookalike.store import journal
from lookalike.store.folder import PHOTOS, generation, now, write_index
from lookalike.store.parts import View
from lookalike.store.segments import Segments


def compact(seg: Segments, v: View) -> int:
    """Fold the journal up to view ``v`` (taken under the writer lock, so it is the journal's
    state then) into a new build of the folder: the alive items and vectors written as a
    build (an approximate index rebuilt with its parameters and its recall measured again;
    with Milvus only the items table), the folded changes moved to the manifest's
    ``history``. Entries that land while it runs, and the photos of added items, are carried
    into the new folder under the lock just before the swap; a folder replaced meanwhile by
    someone else is left alone. Returns the number of changes folded in."""
    path = seg.path
    before = seg.manifest.get("history", [])
    log = journal.history(path, before, upto=v.seq)
    folded = len(log) - len(before)
    if not folded:
        return 0
    items = seg.items(v)
    m = {k: val for k, val in seg.manifest.items() if k not in ("journal", "files")}
    m["counts"] = {**m["counts"], "items": len(items)}
    m["history"] = log + [{"op": "compact", "time": now(),
                           "counts": {"changes": folded, "items": len(items)}}]
    emb = None if seg.milvus else np.asarray(seg.embeddings(v), dtype=np.float32)

    def carry(tmp: Path) -> None:
        if generation(path) != seg.generation:
            raise IndexFormatError(f"index {path} was replaced while it was being compacted; "
                                   "nothing was changed")
        journal.carry(path, tmp, after=v.seq, dim=None if seg.milvus else seg.dim)
        if (path / PHOTOS).is_dir():  # the photos an item names; the rest were kept by a
            # writer killed before its journal record (under the lock, no writer is mid-way)
            later = [r for e in journal.read(tmp, journal.Cursor(), None)[0]
                     if e.change.get("op") == "add" for r in e.records]
            named = {Path(str(p)).name for p in [*items[IMAGE_PATH].dropna().tolist(),
                                                  *(r.get(IMAGE_PATH) for r in later)]
                     if p and Path(str(p)).parent.name == PHOTOS}  # (kept as absolute
            # paths; comparing names only, a relative and an absolute spelling agree)
            shutil.copytree(path / PHOTOS, tmp / PHOTOS, copy_function=os.link,
                            ignore=lambda _, names: [n for n in names if n not in named])

    misfits = _misfits(seg, items, upto=v.seq)
    if misfits:
        raise IndexFormatError(f"index {path}: cannot compact: " + "; ".join(misfits[:5])
                               + ". Remove those items (lookalike remove) or add them again "
                               "with fitting values, then compact")
    write_index(path, m, items, emb, seg.kind, seg.params, before_swap=carry,
                extra_files={n: path / n for n in seg.manifest["files"].get("extra", [])})
    return folded


def _misfits(seg: Segments, items: pd.DataFrame, upto: int) -> list[str]:
    """The journal's values that do not fit their column (written before values were checked,
    lookalike.ingest.checks), each named with its change and item, for the alive items only."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}  # item id → its last add
    for e in journal.read(seg.path, journal.Cursor(), None)[0]:
        if e.seq > upto:
            break
        if e.change.get("op") == "add":
            latest.update((str(r.get(ITEM_ID)), (e.seq, r)) for r in e.records)
    alive = set(items[ITEM_ID].astype(str))
    kinds = column_kinds(seg.base_items, seg.attributes)
    out = []
    for item_id, (seq, rec) in latest.items():
        if item_id not in alive:
            continue
        for column, kind in kinds.items():
            problem = value_problem(rec.get(column), kind)
            if problem:
                out.append(f"change {seq} of the journal gives item {item_id!r} {column}="
                           f"{shown(rec.get(column))}, which {problem}")
    return out
