"""Searching: items similar to an item (kept lists, batched, or searched) or to a photo."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response

from lookalike.server.cache import encode
from lookalike.server.contract import errors
from lookalike.server.routes import ITEM_ID, MAX_K, RERANK
from lookalike.server.served import Served, filters, served

router = APIRouter()
State = Annotated[Served, Depends(served)]
K = Query(10, ge=1, le=MAX_K, description="How many results.")
PER_PRODUCT = Query(False, description="One result per product.")


@router.get("/items/{item_id}/similar", responses=errors(404, 422))
def similar(s: State, request: Request, item_id: str = ITEM_ID, k: int = K,
            per_product: bool = PER_PRODUCT, rerank: str | None = RERANK) -> Any:
    """Items that look like this one (itself excluded), best first. Any other query
    parameter filters by attribute: ``?gender=Men``. Plain requests (no filter, not per
    product, the index's re-ranking, k up to 20) are answered from kept lists, dropped
    exactly when a change can alter them (lookalike.server.cache)."""
    index = s.index
    where = filters(request, index)
    r = index.reranking(rerank)
    if where is None and not per_product and rerank is None and s.cache.usable(k, index):
        snap = index.snapshot()  # the product-page request: a kept list
        slot = snap.slot(item_id)
        body = s.cache.get(index, snap, slot, k)
        if body is None:
            found = s.batcher.similar_slot(index, snap, slot, s.cache.cap, r)
            body = s.cache.put(index, snap, slot, found, k)
        return Response(body, media_type="application/json")
    if where is None and not per_product and not r.expand:  # batched with others
        hits = s.batcher.similar(index, item_id, k, r)
    else:
        hits = index.similar(item_id, k, where=where, per_product=per_product, rerank=r)
    return Response(encode(hits), media_type="application/json")


@router.post("/search", responses=errors(400, 413, 415, 422, 503))
def search(s: State, request: Request,
           image: Annotated[UploadFile, File(description="The photo (multipart field 'image').")],
           k: int = K, per_product: bool = PER_PRODUCT, rerank: str | None = RERANK
           ) -> dict[str, Any]:
    """Items that look like an uploaded photo, best first (same filters as /similar)."""
    index = s.index
    where = filters(request, index)
    data = s.read_upload(image)
    r = index.reranking(rerank)  # refused before the photo is decoded
    with s.decoding(index, data):
        pixels = index.model_input(data, max_pixels=s.max_pixels)
    vector = s.photos.embed(index, pixels)  # with the photos of other searches
    hits = index.search_vector(vector, k, where=where, per_product=per_product, rerank=r)
    return Response(encode(hits), media_type="application/json")
