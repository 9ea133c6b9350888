"""Limits enforced before work: the request body's size before it is stored, and the pixels
of uploaded photos decoded at once.

- :class:`BodyLimit` (ASGI middleware) answers 413 to a request whose ``Content-Length`` is over
  the limit before reading any of its body, and stops one without a length (chunked) as soon as
  what it sent passes the limit: a 300 MB upload is never spooled to disk.
- :class:`DecodeGate` lets at most ``budget`` pixels of photos be decoded at once, each photo
  counted from its header (a JPEG at the size its decoder's draft mode reaches): a burst of
  huge PNGs waits its turn instead of decoding all at once (a 40-megapixel PNG of 115 KB takes
  about 300 MB while it is decoded). One photo over the budget runs alone.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from lookalike.ingest.images import decoded_pixels

#: bytes allowed above the photo's own limit for the rest of a multipart body
BODY_MARGIN = 256 * 1024
DEFAULT_DECODE_BUDGET = 40_000_000


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413, before they are stored."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            await _refuse(send, 400, "Content-Length is not a number")
            return
        if length is not None and length > self.limit:
            await _refuse(send, 413, f"request body of {length:,} bytes is larger than "
                                     f"{self.limit:,}")
            return
        seen = 0
        over = False

        async def counted() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise BodyTooLarge  # stops the body's parsing, whoever reads it
            return message

        async def answer(message: dict[str, Any]) -> None:
            if not over:  # past the limit, the app's answer (its parser failed) is replaced
                await send(message)

        try:
            await self.app(scope, counted, answer)
        except BodyTooLarge:
            pass
        if over:
            await _refuse(send, 413, f"request body larger than {self.limit:,} bytes")


async def _refuse(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def decode_pixels(data: bytes, size: int) -> int:
    """The pixels decoding ``data`` takes, from its header (0 when it has none: such bytes
    fail before any decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return decoded_pixels(img.size, img.format, size)
    except Exception:  # noqa: BLE001 - not an image: the decoder says why, at no cost
        return 0


def return_large_blocks(threshold: int = 4 * 1024 * 1024) -> bool:
    """Have glibc's malloc map every block of ``threshold`` bytes or more on its own and give it
    back to the system when freed. Left to itself it raises that threshold after the first big
    frees and keeps decoded photos' memory in per-thread arenas: a burst of 40-megapixel PNGs
    decoded one at a time, by different worker threads, still took the server to 1.9 GB
    (0.8 GB with this; bench/uploads.py). Returns False where the C library has no mallopt."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class DecodeGate:
    """At most ``budget`` pixels decoded at once."""

    def __init__(self, budget: int = DEFAULT_DECODE_BUDGET) -> None:
        self.budget, self.used = budget, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(pixels, 0), self.budget)
        with self._cond:
            self._cond.wait_for(lambda: self.used + need <= self.budget)
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()
