"""Garment focus before embedding: drop faces, crop to the garment, suppress the background.

Three steps, applied in this order whatever order they are named in:

- ``face``: frontal faces (OpenCV's bundled Haar cascade, checked for skin tones) are painted
  over with the neutral colour, hair included; when the biggest one is in the upper half of
  the photo (someone wearing the garment), the photo is also cut to the body below the chin;
- ``crop``: the photo is cut to the garment's box plus a margin, widened to a square (the
  embedder's input shape, so the garment keeps its proportions) and padded where needed;
- ``background``: everything outside the garment's mask becomes the neutral colour.

The garment's mask comes from the photo's border: on a plain backdrop (shop photos) every
pixel far from the border's colour is foreground; on a busy one (a bed, a floor) GrabCut
separates the middle from the border on a small copy of the photo. A step that finds
nothing leaves the photo as it is and says why; no step ever fails an item.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.ingest.images import FITS, fit_square

log = logging.getLogger(__name__)

STEPS = ("face", "crop", "background")
NEUTRAL = 255  # white: the backdrop of shop photos
WORK = 64  # side of the small square the garment mask is computed on
FACE_WIDTH = 160  # faces are looked for on a grey copy this wide
FACE_MIN = 24  # the cascade's window: the smallest face it finds, in FACE_WIDTH pixels
FACE_REACH = 0.6  # faces are looked for in this upper share of the photo
PLAIN_TOLERANCE = 24  # colour distance (0-255 scale) that still counts as the backdrop
SKIN_SHARE = 0.4  # a detected face whose middle is less skin-toned than this is a pattern
MIN_FOREGROUND = 0.02  # share of the photo below which "nothing found"
MAX_FOREGROUND = 0.96  # share above which the garment fills the photo


@dataclass
class Outcome:
    """The processed photo and, per step, what it did (``done``) or why it did nothing."""

    image: Image.Image
    notes: dict[str, str] = field(default_factory=dict)
    done: dict[str, bool] = field(default_factory=dict)

    def note(self, step: str, ok: bool, text: str) -> None:
        self.done[step], self.notes[step] = ok, text
        if not ok:
            log.debug("preprocess %s: no-op: %s", step, text)


@dataclass(frozen=True)
class Preprocess:
    """A chosen subset of :data:`STEPS` with its settings; ``Preprocess()`` does nothing."""

    steps: tuple[str, ...] = ()
    margin: float = 0.06  # of the garment box's size, on every side
    aspect: float | None = 1.0  # crops' width / height (the embedder's square); None: the photo's
    body: float = 4.0  # face heights kept below the chin by ``face`` (0: all of the body)
    fit: str = "squash"  # how the result becomes square (one of images.FITS), after the steps

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise LookalikeError(f"unknown fit {self.fit!r}; choose one of {', '.join(FITS)}")
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise LookalikeError(f"unknown preprocessing step(s) {', '.join(map(repr, unknown))}; "
                                 f"choose from {', '.join(STEPS)} (or 'none')")
        object.__setattr__(self, "steps", tuple(s for s in STEPS if s in self.steps))

    @classmethod
    def parse(cls, text: str | Iterable[str] | None, fit: str = "squash") -> Preprocess:
        """``"face,crop"``, ``["crop"]``, ``"none"``, ``""`` or ``None``."""
        if text is None:
            return cls(fit=fit)
        names = text.split(",") if isinstance(text, str) else list(text)
        names = [n.strip().lower() for n in names if n.strip()]
        return cls(tuple(n for n in names if n != "none"), fit=fit)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Preprocess:
        d = d or {}
        aspect = d.get("aspect", cls.aspect)
        return cls(tuple(d.get("steps", ())), float(d.get("margin", cls.margin)),
                   None if aspect is None else float(aspect), float(d.get("body", cls.body)),
                   str(d.get("fit", cls.fit)))  # indexes before --fit squashed

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "margin": self.margin, "aspect": self.aspect,
                "body": self.body, "fit": self.fit, "neutral": [NEUTRAL] * 3,
                "mask": f"border colour or GrabCut at {WORK}px",
                "faces": "haarcascade_frontalface_default"}

    def __bool__(self) -> bool:
        return bool(self.steps) or self.fit != "squash"

    def __str__(self) -> str:
        steps = ",".join(self.steps) or "none"
        return steps if self.fit == "squash" else f"{steps}, fit {self.fit}"

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img).image if self else img

    def apply(self, img: Image.Image) -> Outcome:
        """Run the steps on an RGB photo, then make it square as ``fit`` says; every step
        either acts or notes why not."""
        out = self._steps(img)
        if self.fit != "squash":
            out.image = fit_square(out.image.convert("RGB"), self.fit)
        return out

    def _steps(self, img: Image.Image) -> Outcome:
        out = Outcome(img)
        if not self.steps:
            return out
        a = np.asarray(img.convert("RGB"))
        h, w = a.shape[:2]
        if min(h, w) < 8:
            for s in self.steps:
                out.note(s, False, f"photo too small ({w}x{h})")
            return out
        wants_mask = tuple(s for s in ("crop", "background") if s in self.steps)
        seen = _guarded(out, wants_mask, backdrop, a) if wants_mask else None
        heads: list[tuple[int, int, int, int]] = []
        if "face" in self.steps:
            faces = _guarded(out, ("face",), detect_faces, a)
            if faces:
                a, heads, how = _remove_faces(a, faces, self.body, self.aspect)
                h, w = a.shape[:2]
                out.note("face", True, how)
                log.debug("preprocess face: %d face(s) at %s", len(faces), faces)
            elif faces is not None:
                out.note("face", False, "no face found")
        mask = None
        if seen is not None:
            found = _guarded(out, wants_mask, garment_mask, a, heads, seen)
            if found is not None:
                mask, how = found
                if mask is None:
                    for s in wants_mask:
                        out.note(s, False, how)
        if mask is not None and "background" in self.steps:
            a = suppress_background(a, mask)
            out.note("background", True, f"backdrop neutralised ({how})")
        if mask is not None and "crop" in self.steps:
            box = crop_box(mask, w, h, self.margin, self.aspect)
            if box == (0, 0, w, h):
                out.note("crop", False, "the garment fills the photo")
            else:
                a = _cut(a, box)
                out.note("crop", True, f"cropped to the garment ({how})")
                log.debug("preprocess crop: box %s of %dx%d", box, w, h)
        if any(out.done.values()):
            out.image = Image.fromarray(np.ascontiguousarray(a))
        elif img.mode != "RGB":
            out.image = img.convert("RGB")
        return out


def _guarded(out: Outcome, steps: tuple[str, ...], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None with the steps noted as failed: a step never fails the item."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 (an OpenCV error on one odd photo)
        for s in steps:
            out.note(s, False, f"failed: {type(e).__name__}")
        log.warning("preprocess %s failed, photo left as it was: %s", "/".join(steps), e)
        return None


#: what ``lookalike build`` does unless told otherwise (chosen by measurement: docs/quality.md)
DEFAULT_PREPROCESS = Preprocess(fit="crop")


_local = threading.local()


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


def _remove_faces(rgb: np.ndarray, faces: list[tuple[int, int, int, int]], body: float,
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
    left, right = _inside((x0 + x1) / 2 - half, (x0 + x1) / 2 + half, w)
    box = (round(left), round(top), round(right), round(bottom))
    moved = [(hx0 - box[0], hy0 - box[1], hx1 - box[0], hy1 - box[1])
             for hx0, hy0, hx1, hy1 in heads if hy1 > box[1]]
    moved = [_clip(m, box[2] - box[0], box[3] - box[1]) for m in moved]
    return _cut(a, box), moved, "cut to the body below the face"


def _clip(b: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int]:
    return max(0, b[0]), max(0, b[1]), min(w, b[2]), min(h, b[3])


def _head(face: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int]:
    """The face's box grown to take in hair, ears and chin."""
    x0, y0, x1, y1 = face
    fw, fh = x1 - x0, y1 - y0
    return (max(0, x0 - fw // 4), max(0, y0 - fh // 2),
            min(w, x1 + fw // 4), min(h, y1 + fh // 5))


def backdrop(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo's backdrop colour (median of its border, on a WORK×WORK copy) and the share of
    border pixels close to it (1.0: a plain shop backdrop)."""
    import cv2

    small = cv2.resize(rgb, (WORK, WORK), interpolation=cv2.INTER_AREA)
    border = np.concatenate([small[:2].reshape(-1, 3), small[-2:].reshape(-1, 3),
                             small[:, :2].reshape(-1, 3), small[:, -2:].reshape(-1, 3)])
    colour = np.median(border, axis=0)
    near = np.abs(border.astype(np.int16) - colour).max(axis=1) <= PLAIN_TOLERANCE
    return colour, float(near.mean())


def garment_mask(rgb: np.ndarray, heads: Iterable[tuple[int, int, int, int]] = (),
                 seen: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray | None, str]:
    """A WORK×WORK boolean foreground mask (None when nothing stands out) and how it was found.
    ``seen`` is the :func:`backdrop` of the whole photo when ``rgb`` is a part of it."""
    import cv2

    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (WORK, WORK), interpolation=cv2.INTER_AREA)
    colour, plain_share = seen if seen is not None else backdrop(rgb)
    far = np.abs(small.astype(np.int16) - colour).max(axis=2) > PLAIN_TOLERANCE
    if plain_share >= 0.7:  # garments often reach the edge of the photo
        fg, how = far, "plain backdrop"
    else:
        fg, how = _grabcut(small), "GrabCut"
        if fg.mean() < MIN_FOREGROUND and plain_share >= 0.5:
            fg, how = far, "backdrop colour"  # GrabCut gave up; the border's colour still tells
    for x0, y0, x1, y1 in heads:
        fg[y0 * WORK // h:-(-y1 * WORK // h), x0 * WORK // w:-(-x1 * WORK // w)] = False
    fg = _main_parts(fg)
    share = fg.mean()
    if share < MIN_FOREGROUND:
        return None, f"no garment found ({how})"
    if share > MAX_FOREGROUND:
        return None, f"the garment fills the photo ({how})"
    return fg, how


def _grabcut(small: np.ndarray) -> np.ndarray:
    import cv2

    m = WORK // 16
    mask = np.zeros(small.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models from the thread's RNG: same photo, same mask
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mask, (m, m, WORK - 2 * m, WORK - 2 * m),
                    bgd, fgd, 3, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a photo of one flat colour leaves GrabCut nothing to model
        return np.zeros(small.shape[:2], bool)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _main_parts(fg: np.ndarray) -> np.ndarray:
    """Drop specks, close small gaps, keep the big connected parts (a pair of shoes is two), fill holes."""
    import cv2

    m = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN,
                         cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros_like(fg)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.2 * areas.max()) + 1
    m = np.isin(labels, keep)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~m).astype(np.uint8), connectivity=4)
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = x + stats[:, cv2.CC_STAT_WIDTH], y + stats[:, cv2.CC_STAT_HEIGHT]
    inner = (x > 0) & (y > 0) & (right < m.shape[1]) & (bottom < m.shape[0])
    inner[0] = False  # label 0 is the garment itself
    return m | np.isin(labels, np.flatnonzero(inner))


def suppress_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend every pixel outside ``mask`` (any size; upscaled, soft edge) into the neutral colour."""
    import cv2

    h, w = rgb.shape[:2]
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))  # soft edge falls outside
    alpha = cv2.resize(grown.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    k = max(3, (min(h, w) // 64) | 1)
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)[..., None]
    return (rgb * alpha + NEUTRAL * (1.0 - alpha) + 0.5).astype(np.uint8)


def crop_box(mask: np.ndarray, w: int, h: int, margin: float,
             aspect: float | None = None) -> tuple[int, int, int, int]:
    """The mask's bounding box in photo pixels, plus ``margin``, widened to ``aspect`` (width /
    height; default the photo's own); it may reach past the photo's edges (``_cut`` pads
    with the neutral colour)."""
    ys, xs = np.nonzero(mask)
    mh, mw = mask.shape
    x0, x1 = xs.min() * w / mw, (xs.max() + 1) * w / mw
    y0, y1 = ys.min() * h / mh, (ys.max() + 1) * h / mh
    bw, bh = x1 - x0, y1 - y0
    x0, x1 = x0 - margin * bw, x1 + margin * bw
    y0, y1 = y0 - margin * bh, y1 + margin * bh
    bw, bh = x1 - x0, y1 - y0
    ratio = aspect or w / h
    if bw < bh * ratio:  # too narrow for the wanted shape: widen
        grow = (bh * ratio - bw) / 2
        x0, x1 = x0 - grow, x1 + grow
    else:
        grow = (bw / ratio - bh) / 2
        y0, y1 = y0 - grow, y1 + grow
    x0, x1 = _inside(x0, x1, w)
    y0, y1 = _inside(y0, y1, h)
    box = (round(x0), round(y0), round(x1), round(y1))
    if box[2] - box[0] >= w and box[3] - box[1] >= h:
        return (0, 0, w, h)
    return box


def _inside(a: float, b: float, size: int) -> tuple[float, float]:
    """Shift [a, b) into [0, size) when it fits; centre it on the photo's span otherwise."""
    if b - a >= size:
        pad = (b - a - size) / 2
        return -pad, size + pad
    shift = max(0.0, -a) - max(0.0, b - size)
    return a + shift, b + shift


def _cut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]``, with the parts outside the photo in the neutral colour."""
    x0, y0, x1, y1 = box
    h, w = rgb.shape[:2]
    out = np.full((max(1, y1 - y0), max(1, x1 - x0), 3), NEUTRAL, np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out
