"""What every route of the server shares: the live index, the kept lists, the batches, the
limits and the API key, as one object on ``app.state`` handed to handlers by :func:`served`."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import HTTPException, Request, UploadFile

from lookalike.api import Index
from lookalike.server.batcher import SimilarBatcher
from lookalike.server.cache import SimilarCache
from lookalike.server.limits import DecodeGate, decode_pixels
from lookalike.server.live import LiveIndex
from lookalike.server.photos import PhotoBatcher

API_KEY_ENV = "LOOKALIKE_API_KEY"
OPTIONS = {"k", "per_product", "rerank"}  # query parameters that are not filters


@dataclass
class Served:
    """One index folder being served, and the machinery around it."""

    live: LiveIndex
    max_upload_bytes: int
    max_pixels: int
    gate: DecodeGate
    api_key: str
    batcher: SimilarBatcher = field(default_factory=SimilarBatcher)
    photos: PhotoBatcher = field(default_factory=PhotoBatcher)
    cache: SimilarCache = field(default_factory=SimilarCache)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def index(self) -> Index:
        """The index as of the last change the server has seen."""
        return self.live.index

    def fill_lists(self) -> None:
        """Compute every item's similar list until :meth:`close` (a background thread)."""
        self.cache.keep_filled(lambda: self.live.index, self.batcher, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.batcher.close()
        self.photos.close()
        self.live.close()

    @contextmanager
    def decoding(self, index: Index, data: bytes) -> Iterator[None]:
        """Hold the decode budget for this photo while it is decoded."""
        with self.gate.hold(decode_pixels(data, index.spec.input_size)):
            yield

    def authorise(self, x_api_key: str | None) -> None:
        """Refuse a change without the server's API key (HTTP 401)."""
        if not self.api_key:
            raise HTTPException(401, f"changes are disabled: the server has no {API_KEY_ENV}")
        if not x_api_key or not hmac.compare_digest(x_api_key.encode(), self.api_key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key header")

    def read_upload(self, image: UploadFile) -> bytes:
        """The uploaded file's bytes, refused when over the upload limit or empty."""
        limit = self.max_upload_bytes
        data = image.file.read(limit + 1)  # endpoints run in the thread pool, not the event loop
        if len(data) > limit:
            raise HTTPException(413, f"upload larger than {limit:,} bytes")
        if not data:
            raise HTTPException(415, "the uploaded file is empty, not an image")
        return data


def served(request: Request) -> Served:
    """The dependency every handler asks for."""
    return request.app.state.served


def filters(request: Request, index: Index) -> dict[str, list[str]] | None:
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
