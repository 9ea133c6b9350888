"""Catalogue → embeddings → index folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import ITEM_ID, Catalog
from .embed import embed_images
from .embedders import DEFAULT_EMBEDDER, Embedder, create_embedder
from .errors import LookalikeError
from .images import DEFAULT_MAX_PIXELS
from .store import now, versions, write_index


@dataclass
class BuildSummary:
    path: Path
    model: str
    items: int
    skipped: list[dict[str, Any]]
    timings: dict[str, float]

    @property
    def catalog_rows(self) -> int:
        return self.items + len(self.skipped)


def build_index(
    catalog: Catalog,
    out: str | os.PathLike,
    *,
    model: str | Embedder = DEFAULT_EMBEDDER,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> BuildSummary:
    """Embed every photo of ``catalog`` and write the index folder ``out`` atomically.

    Photos that cannot be read are skipped and listed (item id, catalogue row, reason) in the
    manifest; every other item keeps its own vector.
    """
    embedder = create_embedder(model) if isinstance(model, str) else model
    paths = [catalog.image_file(i) if i not in catalog.missing else None
             for i in range(len(catalog))]
    result = embed_images(embedder, paths, batch_size=batch_size, workers=workers,
                          max_pixels=max_pixels, progress=progress, skip=catalog.missing)
    if len(result.rows) == 0:
        first = next(iter(result.skipped.items()), (None, "no rows"))
        raise LookalikeError(f"no photo of {catalog.source.name} could be read; "
                             f"first problem: row {first[0]}: {first[1]}")
    items = catalog.items.iloc[result.rows].reset_index(drop=True)
    items.insert(0, "row", result.rows)
    ids = catalog.items[ITEM_ID]
    skipped = [{"item_id": str(ids.iat[r]), "row": int(r), "reason": reason}
               for r, reason in sorted(result.skipped.items())]
    spec = embedder.spec
    manifest = {
        "created": now(),
        "embedder": spec.to_dict(),
        "preprocessing": spec.preprocessing(),
        "versions": versions(),
        "counts": {"catalog_rows": len(catalog), "items": len(items), "skipped": len(skipped)},
        "catalog": {"source": str(catalog.source.resolve()),
                    "images_root": str(catalog.images_root),
                    "columns": catalog.columns, "attributes": list(catalog.attributes),
                    "has_products": catalog.columns.get("product") is not None},
        "skipped": skipped,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }
    path = write_index(out, manifest, items, result.embeddings)
    return BuildSummary(path, spec.name, len(items), skipped, result.timings)
