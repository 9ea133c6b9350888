"""The HTTP API over one index folder (FastAPI; OpenAPI at /docs).

Item metadata and photos by id, similar items by id or for an uploaded photo, the search page,
and (with an API key) adding and deleting items while serving. Every error is JSON
``{"detail": "..."}`` with the status code that names it.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi import Path as Path_
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from lookalike.api import Index
from lookalike.errors import ImageError, ItemExistsError, LookalikeError, UnknownItemError
from lookalike.ingest.checks import ID_PATTERN, ID_RULE, MAX_ID_CHARS
from lookalike.ingest.images import is_uri, read_bytes
from lookalike.server.batcher import SimilarBatcher
from lookalike.server.cache import SimilarCache, encode
from lookalike.server.contract import errors, install
from lookalike.server.kept import KeptLists
from lookalike.server.limits import (
    BODY_MARGIN,
    DEFAULT_DECODE_BUDGET,
    BodyLimit,
    DecodeGate,
    decode_pixels,
    return_large_blocks,
)
from lookalike.server.live import LiveIndex
from lookalike.server.photos import Busy, PhotoBatcher

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
MAX_K = 100
RERANK_PATTERN = r"^(none|classify|(vote|expand)(=[0-9]{1,6})?)(,(none|classify|(vote|expand)(=[0-9]{1,6})?))*$"
OPTIONS = {"k", "per_product", "rerank"}
RERANK = Query(None, pattern=RERANK_PATTERN,
               description="Re-ranking: none, vote[=N] (rank the category most of the N "
                           "nearest items have first), classify (rank the category the "
                           "model's classifier names first), expand[=N] (α-query "
                           "expansion), comma-separated; default: the index's own.")
STATIC = Path(__file__).parent / "static"
MAX_FILTER_VALUES = 100
API_KEY_ENV = "LOOKALIKE_API_KEY"
SERVE_ENV = "LOOKALIKE_SERVE"  # create_app's arguments for each of several worker processes


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


def _read_upload(image: UploadFile, limit: int) -> bytes:
    data = image.file.read(limit + 1)  # endpoints run in the thread pool, not the event loop
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {limit:,} bytes")
    if not data:
        raise HTTPException(415, "the uploaded file is empty, not an image")
    return data


def _image_error(e: ImageError) -> HTTPException:
    return HTTPException(413 if "too large" in str(e) else 415, str(e))


def create_app(index_path: str | os.PathLike, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decode_pixels: int = DEFAULT_DECODE_BUDGET,
               api_key: str | None = None) -> FastAPI:
    """An app serving the index folder ``index_path``. Adding and deleting items needs
    ``api_key`` (default: the LOOKALIKE_API_KEY environment variable) in the X-API-Key
    header; without a configured key they are refused. A request body over
    ``max_upload_bytes`` (and a little for the form around the photo) is refused before it is
    stored; photos over ``max_pixels`` before they are decoded; and at most
    ``max_decode_pixels`` of photos are decoded at once (lookalike.server.limits)."""
    live = LiveIndex(index_path)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    batcher = SimilarBatcher()
    photos = PhotoBatcher()
    cache = SimilarCache()
    stop = threading.Event()
    filler = threading.Thread(target=cache.keep_filled, args=(lambda: live.index, batcher, stop),
                              name="similar-lists", daemon=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        filler.start()
        yield
        stop.set()
        filler.join(timeout=30)
        batcher.close()
        photos.close()
        live.close()

    first = live.index
    # an id the index holds, as the example of every {item_id} (fuzzers start from it)
    item_path = Path_(description="An item's id.",
                      examples=first.items["item_id"].astype(str).head(1).tolist())
    app = FastAPI(title="lookalike", summary="Visually similar products", lifespan=lifespan,
                  description=f"Index {first.path.name}: {len(first)} items, model {first.model}.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install(app)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + BODY_MARGIN)
    app.add_middleware(KeptLists, cache=cache, current=lambda: live.index)  # (outermost)
    gate = DecodeGate(max_decode_pixels)
    return_large_blocks()

    def decoding(index: Index, data: bytes) -> Any:
        """Hold the decode budget for this photo while it is decoded and searched."""
        return gate.hold(decode_pixels(data, index.spec.input_size))

    def authorise(x_api_key: str | None) -> None:
        if not key:
            raise HTTPException(401, f"changes are disabled: the server has no {API_KEY_ENV}")
        if not x_api_key or not hmac.compare_digest(x_api_key.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key header")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The search page (plain HTML/CSS/JS)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/attributes")
    def attributes() -> dict[str, list[str]]:
        """The attributes that tell items apart best (at most 4, most telling first) with their
        values, for filters; any attribute can still be used as a filter."""
        index = live.index
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
        index = live.index
        return {"status": "ok", "items": len(index), "model": index.model,
                "preprocess": list(index.preprocess.steps), "fit": index.preprocess.fit,
                "rerank": str(index.rerank), "similar_lists": cache.status(index)}

    @app.get("/items/{item_id}", responses=errors(404, 422))
    def item(item_id: str = item_path) -> dict[str, Any]:
        """An item's metadata."""
        try:
            return {"item_id": item_id, "metadata": live.index.metadata(item_id)}
        except UnknownItemError as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/items/{item_id}/image", response_class=FileResponse, responses=errors(404, 422))
    def item_image(item_id: str = item_path) -> Response:
        """The item's catalogue photo (looked up by id: no client-supplied paths)."""
        try:
            path = live.index.image_path(item_id)
        except (UnknownItemError, ImageError) as e:  # unknown, or added without a photo
            raise HTTPException(404, str(e)) from None
        if is_uri(path):  # photos on another filesystem: read and passed on
            try:
                data = read_bytes(path)
            except ImageError:
                raise HTTPException(404, f"item {item_id!r}: its photo cannot be read") from None
            media = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
            return Response(data, media_type=media)
        path = Path(path)
        if not path.is_file():
            raise HTTPException(404, f"item {item_id!r}: its photo is missing on the server")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/items/{item_id}/similar", responses=errors(404, 422))
    def similar(request: Request, item_id: str = item_path,
                k: int = Query(10, ge=1, le=MAX_K, description="How many results."),
                per_product: bool = Query(False, description="One result per product."),
                rerank: str | None = RERANK) -> Any:
        """Items that look like this one (itself excluded), best first. Any other query
        parameter filters by attribute: ``?gender=Men``. Plain requests (no filter, not per
        product, the index's re-ranking, k up to 20) are answered from kept lists, dropped
        exactly when a change can alter them (lookalike.server.cache)."""
        index = live.index
        where = _where(request, index)
        try:
            r = index.reranking(rerank)
            if where is None and not per_product and rerank is None and cache.usable(k, index):
                snap = index.snapshot()  # the product-page request: a kept list
                slot = snap.slot(item_id)
                body = cache.get(index, snap, slot, k)
                if body is None:
                    body = cache.put(index, snap, slot,
                                     batcher.similar_slot(index, snap, slot, cache.cap, r), k)
                return Response(body, media_type="application/json")
            if where is None and not per_product and not r.expand:  # batched with others
                hits = batcher.similar(index, item_id, k, r)
            else:
                hits = index.similar(item_id, k, where=where, per_product=per_product, rerank=r)
            return Response(encode(hits), media_type="application/json")
        except UnknownItemError as e:
            raise HTTPException(404, str(e)) from None
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from None

    @app.post("/search", responses=errors(400, 413, 415, 422, 503))
    def search(request: Request,
               image: Annotated[UploadFile, File(description="The photo (multipart field "
                                                             "'image').")],
               k: int = Query(10, ge=1, le=MAX_K), per_product: bool = Query(False),
               rerank: str | None = RERANK) -> dict[str, Any]:
        """Items that look like an uploaded photo, best first (same filters as /similar)."""
        index = live.index
        where = _where(request, index)
        data = _read_upload(image, max_upload_bytes)
        try:
            r = index.reranking(rerank)  # refused before the photo is decoded
            with decoding(index, data):
                pixels = index.model_input(data, max_pixels=max_pixels)
            vector = photos.embed(index, pixels)  # with the photos of other searches
            hits = index.search_vector(vector, k, where=where, per_product=per_product,
                                       rerank=r)
        except ImageError as e:
            raise _image_error(e) from None
        except Busy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from None
        return Response(encode(hits), media_type="application/json")

    @app.post("/items", status_code=201, responses=errors(400, 401, 409, 413, 415, 422))
    def add_item(item_id: Annotated[str, Form(description=ID_RULE, min_length=1,
                                              max_length=MAX_ID_CHARS, pattern=ID_PATTERN)],
                 image: Annotated[UploadFile, File(description="Its photo.")],
                 metadata: Annotated[str, Form(description="JSON object of attribute values")]
                 = "{}",
                 product_id: Annotated[str | None, Form()] = None,
                 x_api_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Add an item (needs the API key). It is searchable as soon as this returns, and
        recorded in the index folder's journal, so it survives a restart."""
        authorise(x_api_key)
        try:
            meta = json.loads(metadata)
        except ValueError as e:
            raise HTTPException(422, f"metadata is not valid JSON: {e}") from None
        except RecursionError:
            raise HTTPException(422, "metadata is nested too deeply; it is a JSON object of "
                                     "single values") from None
        if not isinstance(meta, dict):
            raise HTTPException(422, "metadata must be a JSON object of attribute values")
        data = _read_upload(image, max_upload_bytes)
        try:
            with decoding(live.index, data):
                live.add(item_id, data, meta, product_id, max_pixels=max_pixels)
        except ImageError as e:
            raise _image_error(e) from None
        except ItemExistsError as e:
            raise HTTPException(409, str(e)) from None
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from None
        return {"item_id": item_id, "metadata": live.index.metadata(item_id)}

    @app.delete("/items/{item_id}", responses=errors(401, 404, 422))
    def delete_item(item_id: str = item_path, x_api_key: Annotated[str | None, Header()] = None
                    ) -> dict[str, Any]:
        """Delete an item (needs the API key); recorded in the journal like an addition."""
        authorise(x_api_key)
        try:
            live.delete(item_id)
        except UnknownItemError as e:
            raise HTTPException(404, str(e)) from None
        return {"deleted": item_id}

    return app


def app_from_environment() -> FastAPI:
    """:func:`create_app` with the arguments in ``$LOOKALIKE_SERVE`` (JSON: ``index`` and the
    keyword arguments): how each worker process of ``lookalike serve --workers N`` makes its
    app."""
    options = json.loads(os.environ[SERVE_ENV])
    return create_app(options.pop("index"), **options)
