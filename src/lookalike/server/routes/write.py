"""Changing the index while serving (with the API key): add an item with its photo, delete one.
Both are recorded in the index folder's journal, so they survive a restart."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, UploadFile

from lookalike.ingest.checks import ID_PATTERN, ID_RULE, MAX_ID_CHARS
from lookalike.server.contract import errors
from lookalike.server.routes import ITEM_ID
from lookalike.server.served import Served, served

router = APIRouter()
State = Annotated[Served, Depends(served)]
ApiKey = Annotated[str | None, Header()]


@router.post("/items", status_code=201, responses=errors(400, 401, 409, 413, 415, 422))
def add_item(s: State,
             item_id: Annotated[str, Form(description=ID_RULE, min_length=1,
                                          max_length=MAX_ID_CHARS, pattern=ID_PATTERN)],
             image: Annotated[UploadFile, File(description="Its photo.")],
             metadata: Annotated[str, Form(description="JSON object of attribute values")] = "{}",
             product_id: Annotated[str | None, Form()] = None,
             x_api_key: ApiKey = None) -> dict[str, Any]:
    """Add an item (needs the API key). It is searchable as soon as this returns."""
    s.authorise(x_api_key)
    meta = _metadata(metadata)
    data = s.read_upload(image)
    with s.decoding(s.index, data):
        s.live.add(item_id, data, meta, product_id, max_pixels=s.max_pixels)
    return {"item_id": item_id, "metadata": s.index.metadata(item_id)}


@router.delete("/items/{item_id}", responses=errors(401, 404, 422))
def delete_item(s: State, item_id: str = ITEM_ID, x_api_key: ApiKey = None) -> dict[str, Any]:
    """Delete an item (needs the API key)."""
    s.authorise(x_api_key)
    s.live.delete(item_id)
    return {"deleted": item_id}


def _metadata(text: str) -> dict[str, Any]:
    """The metadata form field: a JSON object of attribute values."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise HTTPException(422, f"metadata is not valid JSON: {e}") from None
    except RecursionError:
        raise HTTPException(422, "metadata is nested too deeply; it is a JSON object of "
                                 "single values") from None
    if not isinstance(meta, dict):
        raise HTTPException(422, "metadata must be a JSON object of attribute values")
    return meta
