"""Which decoder turns a catalogue's photos into pixels: chosen by timing both on the
catalogue's own photos, and OpenCV only where its pixels match Pillow's.

Pillow is the reference (every format, EXIF rotation, draft mode). OpenCV decodes plain
colour JPEGs with its own libjpeg-turbo (at the same draft scale) with less overhead per photo,
when no preprocessing is asked for; the resizing after it is the same code for both. The choice
is made per catalogue because it depends on the photos (their size, their format) and on the
machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import numpy as np

from lookalike.errors import ImageError
from lookalike.ingest.images import DEFAULT_MAX_PIXELS, ImageSource, load_model_input, read_bytes

SAMPLE = 32  # photos each decoder is timed on
ROUNDS = 3  # alternating rounds; each decoder's best round counts
MAX_DIFFERENCE = 1  # pixel levels: OpenCV is used only if it matches Pillow this closely


@dataclass(frozen=True)
class DecoderChoice:
    """The chosen decoder, and what it was chosen on: milliseconds per photo for each, the
    largest pixel difference between them (levels, 0–255), and the photos timed."""

    name: str
    pillow_ms: float
    opencv_ms: float
    max_difference: int
    photos: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        if not self.photos:
            return f"decoder {self.name} ({self.reason})"
        return (f"decoder {self.name}: {self.pillow_ms:.3f} ms/photo with Pillow, "
                f"{self.opencv_ms:.3f} with OpenCV on {self.photos} photos, pixels differ by "
                f"at most {self.max_difference} level(s) ({self.reason})")


def _sample(sources: Iterable[ImageSource | None], n: int) -> list[bytes]:
    """The bytes of the first ``n`` photos that can be read (paths, URIs or bytes), among the
    first ``2 * n`` of ``sources``."""
    out: list[bytes] = []
    for src in islice(sources, 2 * n):
        if len(out) == n:
            break
        try:
            if isinstance(src, bytes):
                out.append(src)
            elif isinstance(src, (str, os.PathLike)):
                out.append(read_bytes(src))
        except ImageError:
            continue
    return out


def _decode_all(photos: list[bytes], size: int, decoder: str, max_pixels: int
                ) -> tuple[float, list[np.ndarray | None]]:
    t0 = time.perf_counter()
    out: list[np.ndarray | None] = []
    for data in photos:
        try:
            out.append(load_model_input(data, size, max_pixels=max_pixels, decoder=decoder))
        except ImageError:
            out.append(None)
    return time.perf_counter() - t0, out


def compare_decoders(photos: Sequence[bytes], size: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> DecoderChoice:
    """Time Pillow and OpenCV on ``photos`` (file bytes) at the model's ``size`` and choose:
    OpenCV if it is faster and its pixels are within :data:`MAX_DIFFERENCE` of Pillow's on
    every photo (both must also fail on the same photos), else Pillow."""
    photos = list(photos)
    if not photos:
        return DecoderChoice("pillow", 0.0, 0.0, 0, 0, "no photo to time")
    try:
        import cv2  # noqa: F401
    except ImportError:
        return DecoderChoice("pillow", 0.0, 0.0, 0, 0, "OpenCV is not installed")
    best = {"pillow": float("inf"), "opencv": float("inf")}
    pixels: dict[str, list[np.ndarray | None]] = {}
    for _ in range(ROUNDS):
        for name, fastest in best.items():
            seconds, pixels[name] = _decode_all(photos, size, name, max_pixels)
            best[name] = min(fastest, seconds)
    diff = 0
    for a, b in zip(pixels["pillow"], pixels["opencv"]):
        if (a is None) != (b is None):
            diff = 255  # one decoder failed where the other did not
        elif a is not None and b is not None:
            diff = max(diff, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    ms = {k: v / len(photos) * 1e3 for k, v in best.items()}
    if diff > MAX_DIFFERENCE:
        name, reason = "pillow", f"OpenCV's pixels differ by more than {MAX_DIFFERENCE} level"
    elif ms["opencv"] < ms["pillow"]:
        name, reason = "opencv", "faster, same pixels"
    else:
        name, reason = "pillow", "faster"
    return DecoderChoice(name, ms["pillow"], ms["opencv"], diff, len(photos), reason)


def choose_decoder(sources: Iterable[ImageSource | None], size: int,
                   max_pixels: int = DEFAULT_MAX_PIXELS, sample: int = SAMPLE
                   ) -> DecoderChoice:
    """:func:`compare_decoders` on the first ``sample`` readable photos of ``sources`` (read
    lazily; in-memory images are decoded by Pillow whatever the choice)."""
    return compare_decoders(_sample(sources, sample), size, max_pixels)
