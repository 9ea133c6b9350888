"""An index that changes while it serves: add and delete items, durably, without torn reads.

Every change is written to the index folder's journal first (so it survives a restart), then a
new :class:`~lookalike.api.Index` snapshot replaces the current one in a single assignment.
Requests take the snapshot once and use it to the end: a search never sees half a change.
Changes are serialised by a lock; reads never wait for it.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..api import Index
from ..catalog import IMAGE_PATH, ITEM_ID, PRODUCT_ID, ROW
from ..errors import LookalikeError
from ..update import commit_add, commit_delete

PHOTOS = "photos"  # photos of added items, inside the index folder


class ItemExistsError(LookalikeError):
    """The id is taken."""


class LiveIndex:
    def __init__(self, path: str | Path) -> None:
        self.current = Index.open(path)
        self._lock = threading.Lock()

    def add(self, item_id: str, photo: bytes, metadata: dict[str, Any] | None = None,
            product_id: str | None = None, *, max_pixels: int) -> Index:
        """Embed ``photo``, store it in the index folder, record the item; returns the new
        snapshot. Raises ImageError for a photo that cannot be used."""
        item_id = str(item_id)
        if not item_id.strip():
            raise LookalikeError("item_id must not be empty")
        metadata = dict(metadata or {})
        with self._lock:
            ix = self.current
            unknown = sorted(set(metadata) - set(ix.attributes))
            if unknown:
                raise LookalikeError(f"unknown attribute(s) {unknown}; the index has: "
                                     f"{', '.join(ix.attributes)}")
            if item_id in ix:
                raise ItemExistsError(f"item {item_id!r} already exists; delete it first")
            vector = ix.embed(photo, max_pixels=max_pixels)
            fmt = (Image.open(io.BytesIO(photo)).format or "img").lower()
            folder = ix.path / PHOTOS
            folder.mkdir(exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80]
            name = f"{safe}-{uuid.uuid4().hex[:12]}.{fmt}"
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(photo)
            tmp.replace(folder / name)
            rec = {ROW: -1, ITEM_ID: item_id, PRODUCT_ID: str(product_id or item_id),
                   IMAGE_PATH: str((folder / name).resolve()),
                   **{a: metadata.get(a) for a in ix.attributes}}
            commit_add(ix, {"op": "add", "item": rec}, vector[None])
            items = pd.concat([ix.items, pd.DataFrame([rec])], ignore_index=True)
            embeddings = None if ix.backend is not None else \
                np.vstack([np.asarray(ix.embeddings, np.float32), vector[None]])
            self.current = ix.with_items(items, embeddings)
            return self.current

    def delete(self, item_id: str) -> Index:
        """Remove an item (its photo stays on disk); returns the new snapshot. Raises
        UnknownItemError for an id the index does not have."""
        with self._lock:
            ix = self.current
            row = ix.row(item_id)  # UnknownItemError for an unknown id
            commit_delete(ix, {"op": "delete", "item_id": str(item_id)}, [str(item_id)])
            keep = np.ones(len(ix), bool)
            keep[row] = False
            self.current = ix.with_items(
                ix.items[keep], None if ix.backend is not None else np.asarray(ix.embeddings)[keep])
            return self.current


__all__ = ["ItemExistsError", "LiveIndex"]
