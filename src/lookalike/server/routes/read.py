"""Reading the index: filterable attributes, health, an item's metadata and photo."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, Response

from lookalike.errors import ImageError
from lookalike.ingest.catalog import filter_attributes
from lookalike.ingest.images import is_uri, read_bytes
from lookalike.server.contract import errors
from lookalike.server.routes import ITEM_ID
from lookalike.server.served import Served, served

MAX_FILTERS = 4
MAX_FILTER_VALUES = 100
router = APIRouter()
State = Annotated[Served, Depends(served)]


@router.get("/attributes")
def attributes(s: State) -> dict[str, list[str]]:
    """The attributes a shopper filters by (at most 4, most useful first: the category and
    colour, then visual attributes with the fewest values) with their values; any attribute
    can still be used as a filter."""
    index = s.index
    items = index.items
    chosen = filter_attributes(items, index.attributes, (index.category, index.color),
                               MAX_FILTERS, MAX_FILTER_VALUES)
    return {a: sorted(set(items[a].dropna().astype(str)) - {""}) for a in chosen}


@router.get("/health")
def health(s: State) -> dict[str, Any]:
    """Liveness, and what is being served."""
    index = s.index
    return {"status": "ok", "items": len(index), "model": index.model,
            "preprocess": list(index.preprocess.steps), "fit": index.preprocess.fit,
            "rerank": str(index.rerank), "similar_lists": s.cache.status(index)}


@router.get("/items/{item_id}", responses=errors(404, 422))
def item(s: State, item_id: str = ITEM_ID) -> dict[str, Any]:
    """An item's metadata."""
    return {"item_id": item_id, "metadata": s.index.metadata(item_id)}


@router.get("/items/{item_id}/image", response_class=FileResponse, responses=errors(404, 422))
def item_image(s: State, item_id: str = ITEM_ID) -> Response:
    """The item's catalogue photo (looked up by id: no client-supplied paths)."""
    try:
        path = s.index.image_path(item_id)
    except ImageError as e:  # added without a photo
        raise HTTPException(404, str(e)) from None
    if is_uri(path):  # photos on another filesystem: read and passed on
        try:
            data = read_bytes(path)
        except ImageError:
            raise HTTPException(404, f"item {item_id!r}: its photo cannot be read") from None
        return Response(data, media_type=_media_type(str(path)))
    path = Path(path)
    if not path.is_file():
        raise HTTPException(404, f"item {item_id!r}: its photo is missing on the server")
    return FileResponse(path, media_type=_media_type(path.name))


def _media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
