"""The HTTP API over one index folder (FastAPI; OpenAPI at /docs).

Read-only so far: item metadata and photos by id, similar items by id, similar items for an
uploaded photo. Every error is JSON ``{"detail": "..."}`` with the status code that names it.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..api import Hit, Index
from ..errors import ImageError, UnknownItemError
from .batcher import SimilarBatcher

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
MAX_K = 100
OPTIONS = {"k", "per_product"}
STATIC = Path(__file__).parent / "static"
MAX_FILTER_VALUES = 100


def _results(hits: list[Hit]) -> dict[str, Any]:
    return {"results": [{"item_id": h.item_id, "score": round(h.score, 6),
                         "metadata": h.metadata} for h in hits]}


def _where(request: Request, index: Index) -> dict[str, list[str]] | None:
    """Attribute filters from the query string: ``?gender=Men&articleType=Tshirts``; a repeated
    attribute means any of its values."""
    where: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key in OPTIONS:
            continue
        if key not in index.attributes:
            raise HTTPException(422, f"unknown query parameter {key!r}; filters are attribute "
                                     f"names: {', '.join(index.attributes)}")
        where.setdefault(key, []).append(value)
    return where or None


def create_app(index_path: str | os.PathLike, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FastAPI:
    """An app serving the index folder ``index_path``."""
    index = Index.open(index_path)
    batcher = SimilarBatcher(index)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="lookalike", summary="Visually similar products", lifespan=lifespan,
                  description=f"Index {index.path.name}: {len(index)} items, model {index.model}.")

    def row_of(item_id: str) -> int:
        try:
            return index.row(item_id)
        except UnknownItemError as e:
            raise HTTPException(404, str(e)) from None

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The search page (plain HTML/CSS/JS)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/attributes")
    def attributes() -> dict[str, list[str]]:
        """The attributes that tell items apart best (at most 4, most telling first) with their
        values, for filters; any attribute can still be used as a filter."""
        out = {}
        for a in index.display_attributes(4):
            values = index.items[a].dropna().astype(str)
            distinct = sorted(set(values) - {""})
            if 2 <= len(distinct) <= MAX_FILTER_VALUES:
                out[a] = distinct
        return out

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, and what is being served."""
        return {"status": "ok", "items": len(index), "model": index.model}

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        """An item's metadata."""
        row_of(item_id)
        return {"item_id": item_id, "metadata": index.metadata(item_id)}

    @app.get("/items/{item_id}/image", response_class=FileResponse)
    def item_image(item_id: str) -> FileResponse:
        """The item's catalogue photo (looked up by id: no client-supplied paths)."""
        row_of(item_id)
        path = index.image_path(item_id)
        if not path.is_file():
            raise HTTPException(404, f"item {item_id!r}: its photo is missing on the server")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/items/{item_id}/similar")
    def similar(item_id: str, request: Request,
                k: int = Query(10, ge=1, le=MAX_K, description="How many results."),
                per_product: bool = Query(False, description="One result per product.")
                ) -> dict[str, Any]:
        """Items that look like this one (itself excluded), best first. Any other query
        parameter filters by attribute: ``?gender=Men``."""
        row = row_of(item_id)
        where = _where(request, index)
        if where is None and not per_product:  # the common case: batched with its neighbours
            return _results(index.hits(*batcher.similar(row, k)))
        return _results(index.similar(item_id, k, where=where, per_product=per_product))

    @app.post("/search")
    def search(request: Request,
               image: Annotated[UploadFile, File(description="The photo (multipart field "
                                                             "'image').")],
               k: int = Query(10, ge=1, le=MAX_K), per_product: bool = Query(False)
               ) -> dict[str, Any]:
        """Items that look like an uploaded photo, best first (same filters as /similar)."""
        where = _where(request, index)
        data = image.file.read(max_upload_bytes + 1)  # runs in the thread pool, not the loop
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload larger than {max_upload_bytes:,} bytes")
        if not data:
            raise HTTPException(415, "the uploaded file is empty, not an image")
        try:
            hits = index.search(data, k, where=where, per_product=per_product,
                                max_pixels=max_pixels)
        except ImageError as e:
            status = 413 if "too large" in str(e) else 415
            raise HTTPException(status, str(e)) from None
        return _results(hits)

    return app
