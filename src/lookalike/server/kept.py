"""The product-page request answered before the web framework sees it.

``GET /items/{id}/similar`` with no query or only ``k`` (up to the kept lists' size) is the request
a shop sends most, and its answer is bytes kept by :class:`~lookalike.server.cache.SimilarCache`.
This ASGI middleware looks it up and writes it straight back: no routing, no parameter
validation, no thread-pool hop (about a third of the server's time per request before). Every
other request, and this one when its list is not kept (an unknown item, a list not computed
yet, a k over the cap), goes on to the app unchanged, which answers it the same way it always
did, so both paths give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lookalike.api import Index
from lookalike.errors import LookalikeError
from lookalike.server.cache import SimilarCache

PREFIX, SUFFIX = "/items/", "/similar"
DEFAULT_K = 10


def plain_k(query: bytes) -> int | None:
    """``k`` of a query string that asks for nothing else (b"" or b"k=12"), else None."""
    if not query:
        return DEFAULT_K
    if query.startswith(b"k=") and query[2:].isdigit() and len(query) <= 5:
        return int(query[2:]) or None
    return None


class KeptLists:
    """ASGI middleware answering plain similar-by-id requests from ``cache``, for the index
    ``current()`` serves."""

    def __init__(self, app: Any, cache: SimilarCache, current: Callable[[], Index]) -> None:
        self.app, self.cache, self.current = app, cache, current

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = self._lookup(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _lookup(self, scope: dict[str, Any]) -> bytes | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX) or not path.endswith(SUFFIX):
            return None
        item_id = path[len(PREFIX):-len(SUFFIX)]
        k = plain_k(scope.get("query_string", b""))
        if not item_id or "/" in item_id or k is None:
            return None
        index = self.current()
        if not self.cache.usable(k, index):
            return None
        snap = index.snapshot()
        try:
            slot = snap.slot(item_id)
        except LookalikeError:  # unknown or removed: the app says so
            return None
        return self.cache.get(index, snap, slot, k)
