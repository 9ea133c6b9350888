"""Faces in a product photo: found with OpenCV's Haar cascade (checked for skin, so a printed
face on a T-shirt is left alone) and removed with the head around them, keeping the body.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.ingest.boxes import NEUTRAL, cut, within

FACE_WIDTH = 160  # faces are looked for on a grey copy this wide


FACE_MIN = 24  # the cascade's window: the smallest face it finds, in FACE_WIDTH pixels


FACE_REACH = 0.6  # faces are looked for in this upper share of the photo


SKIN_SHARE = 0.4  # a detected face whose middle is less skin-toned than this is a pattern


_local = threading.local()  # one cascade per thread (OpenCV's is not thread-safe)


def _face_cascade() -> Any:
    """This thread's face cascade (OpenCV's detector keeps per-call state: one per thread)."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        import cv2

        cv2.setNumThreads(1)  # decoding threads already run side by side
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        cascade = _local.cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise LookalikeError(f"OpenCV's face cascade could not be loaded from {path}")
    return cascade


def detect_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x0, y0, x1, y1) boxes in ``rgb``'s pixels.

    The cascade only looks in the upper FACE_REACH of the photo (where the head of someone
    wearing a garment is) and only where skin tones are (a photo of shoes costs next to
    nothing); a box whose middle is not mostly skin is a pattern on the garment, not a face."""
    import cv2

    h, w = rgb.shape[:2]
    scale = FACE_WIDTH / w
    sw, sh = FACE_WIDTH, round(h * scale)
    if sh < FACE_MIN:
        return []
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    skin = skin_mask(small)
    core = (FACE_MIN // 2) ** 2  # the middle of the smallest face the cascade sees
    skin[round(sh * FACE_REACH):] = False
    if skin.sum() < core * SKIN_SHARE:
        return []
    ys, xs = np.nonzero(skin)
    x0, x1 = max(0, xs.min() - FACE_MIN), min(sw, xs.max() + 1 + FACE_MIN)
    y0, y1 = max(0, ys.min() - FACE_MIN), min(round(sh * FACE_REACH), ys.max() + 1 + FACE_MIN)
    if y1 - y0 < FACE_MIN or x1 - x0 < FACE_MIN:
        return []
    gray = cv2.cvtColor(small[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    biggest = sw * 2 // 5
    found = _face_cascade().detectMultiScale(gray, scaleFactor=1.2, minNeighbors=5,
                                             minSize=(FACE_MIN, FACE_MIN),
                                             maxSize=(biggest, biggest))
    faces = []
    for fx, fy, fw, fh in found:
        fx, fy = fx + x0, fy + y0
        if skin[fy + fh // 4:fy + fh * 3 // 4, fx + fw // 4:fx + fw * 3 // 4].mean() >= SKIN_SHARE:
            faces.append((int(fx / scale), int(fy / scale), int((fx + fw) / scale),
                          int((fy + fh) / scale)))
    return faces


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """Skin-toned pixels: the YCrCb box of Chai and Ngan (1999)."""
    import cv2

    ycc = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb)
    return cv2.inRange(ycc, (0, 133, 77), (255, 173, 127)) > 0


def remove_faces(rgb: np.ndarray, faces: list[tuple[int, int, int, int]], body: float,
                  aspect: float | None) -> tuple[np.ndarray, list[tuple[int, int, int, int]], str]:
    """Paint every head over; when the biggest face is in the upper half of the photo (a person
    wearing the garment), also cut the photo to the body below its chin, ``body`` face heights
    long (0: down to the bottom of the photo). Returns the photo, the heads left in it, and
    what was done."""
    h, w = rgb.shape[:2]
    heads = [_head(f, w, h) for f in faces]
    a = rgb.copy()
    for x0, y0, x1, y1 in heads:
        a[y0:y1, x0:x1] = NEUTRAL
    x0, y0, x1, y1 = max(faces, key=lambda f: f[2] - f[0])
    if (y0 + y1) / 2 > h / 2:
        return a, heads, "face painted over"
    fh = y1 - y0
    top = y1 + 0.15 * fh
    bottom = min(h, top + body * fh) if body > 0 else h
    if bottom - top < fh:
        return a, heads, "face painted over"
    half = (bottom - top) * (aspect or w / h) / 2
    left, right = within((x0 + x1) / 2 - half, (x0 + x1) / 2 + half, w)
    box = (round(left), round(top), round(right), round(bottom))
    moved = [(hx0 - box[0], hy0 - box[1], hx1 - box[0], hy1 - box[1])
             for hx0, hy0, hx1, hy1 in heads if hy1 > box[1]]
    moved = [_clip(m, box[2] - box[0], box[3] - box[1]) for m in moved]
    return cut(a, box), moved, "cut to the body below the face"


def _clip(b: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int]:
    return max(0, b[0]), max(0, b[1]), min(w, b[2]), min(h, b[3])


def _head(face: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int]:
    """The face's box grown to take in hair, ears and chin."""
    x0, y0, x1, y1 = face
    fw, fh = x1 - x0, y1 - y0
    return (max(0, x0 - fw // 4), max(0, y0 - fh // 2),
            min(w, x1 + fw // 4), min(h, y1 + fh // 5))
