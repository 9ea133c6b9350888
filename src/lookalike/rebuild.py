"""Building over an index that has changed since its own build.

Items added through ``lookalike add``, ``Index.add`` or the server, and items removed, live in
the folder's journal (or, once compacted, in its build): a new build from the catalogue would
drop them without a word. :func:`pending_changes` finds them; ``lookalike build`` refuses to
replace such an index unless told to ``force`` (drop them) or ``keep`` them, which replays the
final state onto the new build: the added items that are still there, embedded again with the
new build's model from their photos, and the removals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.catalog import IMAGE_PATH, ITEM_ID, PRODUCT_ID, ROW
from lookalike.ingest.images import read_bytes
from lookalike.store import journal
from lookalike.store.folder import is_index, open_segments
from lookalike.store.segments import plain

ON_CHANGES = ("refuse", "force", "keep")


@dataclass
class Pending:
    """An index's changes since its catalogue build, as a final state to replay."""

    changes: int  # adds and deletes in the change log
    rows: list[dict[str, Any]] = field(default_factory=list)  # added items still there
    photos: list[bytes] = field(default_factory=list)  # their photos' bytes, one per row
    deleted: list[str] = field(default_factory=list)  # catalogue items removed
    unreplayable: dict[str, str] = field(default_factory=dict)  # item id → why not


def pending_changes(out: str | Path, read_photos: bool = False) -> Pending | None:
    """The changes of the index at ``out`` since its catalogue build (None: no index there,
    or no change); with ``read_photos`` the added items' photos are read, for a replay."""
    out = Path(out)
    if not is_index(out):
        return None
    seg = open_segments(out)
    log = [c for c in journal.history(out, seg.manifest.get("history", []))
           if c.get("op") in ("add", "delete")]
    if not log:
        return None
    items = seg.items(seg.view)
    added = items[items[ROW] < 0]
    alive = set(items[ITEM_ID].astype(str))
    removed = {str(i) for c in log if c["op"] == "delete" for i in c.get("item_ids", [])}
    p = Pending(len(log), deleted=sorted(removed - alive))
    if not read_photos:
        return p
    for rec in added.to_dict("records"):
        item_id = str(rec[ITEM_ID])
        path = plain(rec.get(IMAGE_PATH))
        if path is None:
            p.unreplayable[item_id] = "added with its vector alone: no photo to embed again"
            continue
        try:
            p.photos.append(read_bytes(path))
        except (OSError, ImageError) as e:
            p.unreplayable[item_id] = f"its photo cannot be read: {e}"
            continue
        p.rows.append({ITEM_ID: item_id, PRODUCT_ID: plain(rec[PRODUCT_ID]),
                       **{a: plain(rec[a]) for a in seg.attributes}})
    return p


def check_replace(out: str | Path, on_changes: str) -> Pending | None:
    """Before a build over ``out``: refuse (``refuse``) when its index has changes since its
    build, or read them for a replay (``keep``); ``force`` drops them."""
    if on_changes not in ON_CHANGES:
        raise LookalikeError(f"unknown choice {on_changes!r} for an index with changes; choose "
                             f"one of {', '.join(ON_CHANGES)}")
    if on_changes == "force":
        return None
    pending = pending_changes(out, read_photos=on_changes == "keep")
    if pending is not None and on_changes == "refuse":
        raise LookalikeError(
            f"index {out} has {pending.changes} change(s) since it was built (items added or "
            f"removed, e.g. through the server): a new build would drop them. Build with "
            f'on_changes="keep" to replay them onto the new build, or on_changes="force" to '
            "drop them")
    return pending


def replay(path: Path, pending: Pending) -> str:
    """Apply ``pending`` to the new index at ``path``; returns what was done, in words."""
    from lookalike.api import Index

    ix = Index.open(path, auto_compact=False)
    gone = [i for i in pending.deleted if i in ix]
    if gone:
        ix.delete(gone)
    if pending.rows:
        ix.add(pending.rows, photos=pending.photos)
    said = (f"kept {pending.changes} change(s): {len(pending.rows)} added item(s) embedded "
            f"again, {len(gone)} removal(s) applied")
    if pending.unreplayable:
        said += "; not kept: " + "; ".join(f"{i} ({why})" for i, why in
                                           list(pending.unreplayable.items())[:10])
    return said
