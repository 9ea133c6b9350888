"""Turning what a caller adds into journal records: a catalogue delta (only new and changed
rows embedded), or rows with their photos or vectors. Plain functions over an opened index;
``Index.add`` commits what they prepare."""

from __future__ import annotations

import io
import os
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from lookalike.embed.local import embed_images
from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PHOTO_DIGEST,
    PRODUCT_ID,
    ROW,
    Catalog,
    photo_digest,
)
from lookalike.ingest.checks import check_item_id, checked_metadata, column_kinds
from lookalike.ingest.images import ImageSource, file_digest, is_uri
from lookalike.store import journal
from lookalike.store.folder import PHOTOS
from lookalike.store.segments import plain


@dataclass
class UpdateSummary:
    """What one ``Index.add`` or ``Index.delete`` did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # item id → reason
    removed: list[str] = field(default_factory=list)
    change: int | None = None  # the journal entry's number, None when nothing changed


class Prepared(NamedTuple):
    """Added items ready to commit: their records, vectors and photo bytes to keep."""

    records: list[dict[str, Any]]
    vectors: np.ndarray
    photos: list[bytes | None]  # bytes to keep in the folder's photos/, per record
    summary: UpdateSummary


def from_delta(ix: Any, delta: Catalog, batch_size: int, progress: bool) -> Prepared:
    """A catalogue delta's new and changed rows, embedded as the index's catalogue was;
    unchanged rows and unreadable photos reported."""
    out = UpdateSummary()
    missing = [a for a in ix.attributes if a not in delta.attributes]
    if missing:
        raise LookalikeError(f"the delta {delta.source.name} lacks the index's attribute "
                             f"column(s) {', '.join(missing)}")
    ids = delta.items[ITEM_ID].astype(str).tolist()
    no_duplicates(ids, f"the delta {delta.source.name}")
    paths = [delta.image_file(r) for r in range(len(delta))]
    kinds = index_kinds(ix)
    values: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for r, item_id in enumerate(ids):
        try:
            values[r] = checked_metadata({a: plain(delta.items[a].iat[r]) for a in ix.attributes},
                                         kinds, item_id)
        except LookalikeError as e:
            out.skipped[item_id] = str(e)
            continue
        if r in delta.missing:
            out.skipped[item_id] = delta.missing[r]
        elif item_id in ix and _unchanged(ix, item_id, delta, r, photo_digest(paths[r])):
            out.unchanged.append(item_id)  # only known ids are read before embedding
        else:
            todo.append(r)
    if not todo:
        return Prepared([], np.zeros((0, ix.spec.dim), np.float32), [], out)
    emb = embed_images(ix.embedder, [paths[r] for r in todo], batch_size=batch_size,
                       progress=progress, preprocess=ix.preprocess)
    records = []
    for pos, digest in zip(emb.rows, emb.digests):  # the digest of the bytes embedded
        r = todo[pos]
        item = delta.items.iloc[r]
        records.append({ROW: -1, ITEM_ID: ids[r], PRODUCT_ID: str(item[PRODUCT_ID]),
                        IMAGE_PATH: absolute(paths[r]),
                        **values[r], PHOTO_DIGEST: digest})
    for pos, reason in emb.skipped.items():
        out.skipped[ids[todo[pos]]] = reason
    return Prepared(records, emb.embeddings, [None] * len(records), out)


def _unchanged(ix: Any, item_id: str, delta: Catalog, r: int, digest: str | None) -> bool:
    snap = ix.snapshot()
    stored = snap.seg.metadata(snap.slot(item_id),
                               [*ix.attributes, PHOTO_DIGEST, PRODUCT_ID])
    if digest is None or stored[PHOTO_DIGEST] != digest:
        return False
    item = delta.items.iloc[r]
    return all(str(stored[a]) == str(plain(item[a])) for a in ix.attributes) \
        and str(stored[PRODUCT_ID]) == str(item[PRODUCT_ID])


def from_rows(ix: Any, rows: pd.DataFrame | Sequence[Mapping[str, Any]],
              photos: Sequence[ImageSource] | None, vectors: np.ndarray | None,
              max_pixels: int) -> Prepared:
    """Rows with their photos (embedded here) or their vectors, checked."""
    recs = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else \
        [dict(r) for r in rows]
    known = {ITEM_ID, PRODUCT_ID, IMAGE_PATH, *ix.attributes}
    unknown = sorted({k for r in recs for k in r} - known)
    if unknown:
        raise LookalikeError(f"unknown attribute(s) {unknown}; the index has: "
                             f"{', '.join(ix.attributes)}")
    ids = [check_item_id(plain(r.get(ITEM_ID)), f"(row {i})") for i, r in enumerate(recs)]
    no_duplicates(ids, "the rows")
    kinds = index_kinds(ix)
    values = [checked_metadata({a: plain(r.get(a)) for a in ix.attributes}, kinds, ids[i])
              for i, r in enumerate(recs)]
    if (photos is None) == (vectors is None):
        raise LookalikeError("give the rows' photos= or their vectors=, one of the two")
    given = photos if photos is not None else vectors
    if len(given) != len(recs):
        raise LookalikeError(f"{len(recs)} row(s) but {len(given)} "
                             f"{'photos' if photos is not None else 'vectors'}")
    keep: list[bytes | None] = [None] * len(recs)
    digests: list[str | None] = [None] * len(recs)
    paths: list[str | None] = [plain(r.get(IMAGE_PATH)) for r in recs]
    if photos is not None:
        out = np.zeros((len(recs), ix.spec.dim), np.float32)
        for i, photo in enumerate(photos):
            try:
                out[i] = ix.embed(photo, max_pixels=max_pixels)
            except ImageError as e:
                raise type(e)(f"item {ids[i]!r}: {e}") from None
            if isinstance(photo, (bytes, bytearray)):
                keep[i], digests[i] = bytes(photo), file_digest(bytes(photo))
            elif isinstance(photo, (str, os.PathLike)):
                paths[i], digests[i] = absolute(photo), photo_digest(photo)
    else:
        out = unit_vectors(vectors, ix.spec.dim)
    products = [plain(r.get(PRODUCT_ID)) for r in recs]
    records = [{ROW: -1, ITEM_ID: ids[i],
                PRODUCT_ID: ids[i] if products[i] in (None, "") else str(products[i]),
                IMAGE_PATH: paths[i],
                **values[i], PHOTO_DIGEST: digests[i]}
               for i, r in enumerate(recs)]
    return Prepared(records, out, keep, UpdateSummary())


def index_kinds(ix: Any) -> dict[str, str]:
    """What each attribute column of the index holds (lookalike.ingest.checks.column_kinds)."""
    return column_kinds(ix.snapshot().seg.base_items, ix.attributes)


def no_duplicates(ids: Sequence[str], what: str) -> None:
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise LookalikeError(f"{what} list(s) item id(s) more than once: {', '.join(dupes[:10])}")


def unit_vectors(vectors: Any, dim: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise LookalikeError(f"vectors must be (rows, {dim}) for this index, got {v.shape}")
    norms = np.linalg.norm(v, axis=1)
    if not np.isfinite(v).all() or (norms == 0).any():
        raise LookalikeError("vectors must be finite and not all zero")
    return v / norms[:, None]


def absolute(location: Path | str) -> str:
    return str(location) if is_uri(location) else str(Path(location).resolve())


def keep_photo(folder: Path, item_id: str, data: bytes) -> Path:
    """Store an added item's photo bytes durably in the folder's photos/."""
    fmt = (Image.open(io.BytesIO(data)).format or "img").lower()
    photos = folder / PHOTOS
    photos.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80]
    path = photos / f"{safe}-{uuid.uuid4().hex[:12]}.{fmt}"
    journal.write_file(path, data)
    return path.resolve()


def prepare(ix: Any, items: Catalog | pd.DataFrame | Sequence[Mapping[str, Any]],
            photos: Sequence[ImageSource] | None, vectors: np.ndarray | None,
            batch_size: int, progress: bool, max_pixels: int) -> Prepared:
    """What ``Index.add`` commits: a catalogue delta's new and changed rows, or rows with
    their photos or vectors."""
    if isinstance(items, Catalog):
        if photos is not None or vectors is not None:
            raise LookalikeError("a catalogue delta brings its own photos; give photos or "
                                 "vectors with rows instead")
        return from_delta(ix, items, batch_size, progress)
    return from_rows(ix, items, photos, vectors, max_pixels)
