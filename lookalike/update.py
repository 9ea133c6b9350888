"""Change an index folder without a rebuild: add or replace items from a catalogue delta,
remove items by id.

Each call is one journal entry (store.append_change): the vectors first, the JSON that commits
them last, each renamed into place. A process killed in the middle leaves the index as it was
before the call; ``Index.open`` applies every committed entry in order. With the Milvus backend
an add writes the collection before its commit and a remove deletes after it: either way a
vector whose id the items table lacks is never returned, and running the call again completes
it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .api import Index, _plain
from .catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PHOTO_DIGEST,
    PRODUCT_ID,
    ROW,
    Catalog,
    photo_digest,
    read_catalog,
)
from .embed import embed_images
from .errors import LookalikeError, UnknownItemError
from .images import is_uri
from .store import append_change, now


@dataclass
class UpdateSummary:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # item id → reason
    removed: list[str] = field(default_factory=list)
    change: int | None = None  # the journal entry's number, None when nothing changed


def read_delta(index: Index, path: str | os.PathLike, images: str | os.PathLike | None = None
               ) -> Catalog:
    """A catalogue delta read with the columns the index was built with."""
    cols = index.manifest["catalog"]["columns"]
    return read_catalog(path, images, id_column=cols["id"], image_column=cols["image"],
                        product_column=cols.get("product"), attributes=list(index.attributes))


def add_items(index_path: str | os.PathLike, delta: Catalog, *, batch_size: int = 32,
              progress: bool = False) -> UpdateSummary:
    """Embed the delta's new items and those whose photo or metadata changed (same id:
    replaced), as the index's catalogue was embedded; unchanged rows are left alone and
    unreadable photos reported. One journal entry for the whole delta."""
    ix = Index.open(index_path)
    out = UpdateSummary()
    missing_attrs = [a for a in ix.attributes if a not in delta.attributes]
    if missing_attrs:
        raise LookalikeError(f"the delta {delta.source.name} lacks the index's attribute "
                             f"column(s) {', '.join(missing_attrs)}")
    ids = delta.items[ITEM_ID].astype(str).tolist()
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise LookalikeError(f"the delta lists item id(s) more than once: {', '.join(dupes[:10])}")
    paths = [delta.image_file(r) for r in range(len(delta))]
    todo: list[int] = []
    for r, item_id in enumerate(ids):
        if r in delta.missing:
            out.skipped[item_id] = delta.missing[r]
        elif item_id in ix and _unchanged(ix, item_id, delta, r, photo_digest(paths[r])):
            out.unchanged.append(item_id)  # only known ids are read before embedding
        else:
            todo.append(r)
    if not todo:
        return out
    emb = embed_images(ix.embedder, [paths[r] for r in todo], batch_size=batch_size,
                       progress=progress, preprocess=ix.preprocess)
    records = []
    for pos, digest in zip(emb.rows, emb.digests):  # the digest of the bytes embedded
        r = todo[pos]
        item = delta.items.iloc[r]
        records.append({ROW: -1, ITEM_ID: ids[r], PRODUCT_ID: str(item[PRODUCT_ID]),
                        IMAGE_PATH: _absolute(paths[r]),
                        **{a: _plain(item[a]) for a in ix.attributes},
                        PHOTO_DIGEST: digest})
        (out.replaced if ids[r] in ix else out.added).append(ids[r])
    for pos, reason in emb.skipped.items():
        out.skipped[ids[todo[pos]]] = reason
    if records:
        out.change = commit_add(ix, {
            "op": "add", "items": records, "time": now(),
            "counts": {"added": len(out.added), "replaced": len(out.replaced)}},
            emb.embeddings)
    return out


def remove_items(index_path: str | os.PathLike, item_ids: Sequence[object]) -> UpdateSummary:
    """Remove items by id, all or none: an unknown id changes nothing and is named."""
    ix = Index.open(index_path)
    wanted = list(dict.fromkeys(str(i) for i in item_ids))
    unknown = [i for i in wanted if i not in ix]
    if unknown:
        raise UnknownItemError(f"index {ix.path} has no item(s) {', '.join(unknown[:20])}"
                               + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
                               + "; nothing was removed")
    out = UpdateSummary(removed=wanted)
    if wanted:
        out.change = commit_delete(ix, {"op": "delete", "item_ids": wanted, "time": now(),
                                        "counts": {"removed": len(wanted)}}, wanted)
    return out


def commit_add(ix: Index, change: dict[str, Any], vectors: np.ndarray) -> int:
    """Commit added items (``change["items"]``, or the server's single ``change["item"]``)
    with their vectors, one row each: into the journal, or with Milvus into the collection
    first (an id the items table lacks is never returned), then the journal. Returns the
    journal entry's number."""
    if ix.backend is None:
        return append_change(ix.path, change, vectors)
    records = change["items"] if "items" in change else [change["item"]]
    ix.backend.upsert(pd.DataFrame(records), vectors)
    return append_change(ix.path, change)


def commit_delete(ix: Index, change: dict[str, Any], item_ids: Sequence[str]) -> int:
    """Commit removed items: the journal entry first, then with Milvus the collection's
    delete (a vector left behind by a crash between them is never returned)."""
    seq = append_change(ix.path, change)
    if ix.backend is not None:
        ix.backend.delete(item_ids)
    return seq


def _absolute(location: Path | str) -> str:
    return str(location) if is_uri(location) else str(Path(location).resolve())


def _unchanged(ix: Index, item_id: str, delta: Catalog, r: int, digest: str | None) -> bool:
    row = ix.items.iloc[ix.row(item_id)]
    if PHOTO_DIGEST not in ix.items.columns or digest is None or row[PHOTO_DIGEST] != digest:
        return False
    item = delta.items.iloc[r]
    return all(str(_plain(row[a])) == str(_plain(item[a])) for a in ix.attributes) \
        and str(row[PRODUCT_ID]) == str(item[PRODUCT_ID])
