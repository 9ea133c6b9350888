"""Boxes on a photo: kept inside its edges, cut out with the backdrop colour where they reach
past them.
"""

from __future__ import annotations

import numpy as np

NEUTRAL = 255  # white: the backdrop of shop photos


def within(a: float, b: float, size: int) -> tuple[float, float]:
    """Shift [a, b) into [0, size) when it fits; centre it on the photo's span otherwise."""
    if b - a >= size:
        pad = (b - a - size) / 2
        return -pad, size + pad
    shift = max(0.0, -a) - max(0.0, b - size)
    return a + shift, b + shift


def cut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]``, with the parts outside the photo in the neutral colour."""
    x0, y0, x1, y1 = box
    h, w = rgb.shape[:2]
    out = np.full((max(1, y1 - y0), max(1, x1 - x0), 3), NEUTRAL, np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out
