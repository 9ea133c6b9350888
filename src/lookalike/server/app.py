"""The HTTP API over one index folder (FastAPI; OpenAPI at /docs).

Item metadata and photos by id, similar items by id or for an uploaded photo, the search page,
and (with an API key) adding and deleting items while serving. Every error is JSON
``{"detail": "..."}`` with the status code that names it: the library's errors by their kind
(lookalike.server.contract).

The app is assembled here: the routes by concern (lookalike.server.routes), the state they
share (lookalike.server.served), and the middleware in front.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lookalike.server.contract import example_item_id, install
from lookalike.server.kept import KeptLists
from lookalike.server.limits import (
    BODY_MARGIN,
    DEFAULT_DECODE_BUDGET,
    BodyLimit,
    DecodeGate,
    return_large_blocks,
)
from lookalike.server.live import LiveIndex
from lookalike.server.routes import page, read, search, write
from lookalike.server.routes.page import STATIC
from lookalike.server.served import API_KEY_ENV, Served

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
SERVE_ENV = "LOOKALIKE_SERVE"  # create_app's arguments for each of several worker processes


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
    s = Served(LiveIndex(index_path), max_upload_bytes, max_pixels,
               DecodeGate(max_decode_pixels),
               api_key if api_key is not None else os.environ.get(API_KEY_ENV, ""))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        filler = threading.Thread(target=s.fill_lists, name="similar-lists", daemon=True)
        filler.start()
        yield
        s.stop.set()
        filler.join(timeout=30)
        s.close()

    first = s.index
    app = FastAPI(title="lookalike", summary="Visually similar products", lifespan=lifespan,
                  description=f"Index {first.path.name}: {len(first)} items, model {first.model}.")
    app.state.served = s
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routers = [routes.router for routes in (page, read, search, write)]
    for router in routers:
        app.include_router(router)
    install(app, routers)
    # an id the index holds, as the example of every {item_id} (fuzzers start from it)
    example_item_id(app, first.items["item_id"].astype(str).head(1).tolist())
    app.add_middleware(BodyLimit, limit=max_upload_bytes + BODY_MARGIN)
    app.add_middleware(KeptLists, cache=s.cache, current=lambda: s.index)  # (outermost)
    return_large_blocks()
    return app


def app_from_environment() -> FastAPI:
    """:func:`create_app` with the arguments in ``$LOOKALIKE_SERVE`` (JSON: ``index`` and the
    keyword arguments): how each worker process of ``lookalike serve --workers N`` makes its
    app."""
    options = json.loads(os.environ[SERVE_ENV])
    return create_app(options.pop("index"), **options)
