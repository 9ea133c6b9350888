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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError, choose
from lookalike.ingest.boxes import NEUTRAL, cut, within
from lookalike.ingest.faces import detect_faces, remove_faces
from lookalike.ingest.images import FITS, fit_square

log = logging.getLogger(__name__)

STEPS = ("face", "crop", "background")
WORK = 64  # side of the small square the garment mask is computed on
PLAIN_TOLERANCE = 24  # colour distance (0-255 scale) that still counts as the backdrop
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
        choose(self.fit, FITS, "fit")
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
                a, heads, how = remove_faces(a, faces, self.body, self.aspect)
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
                a = cut(a, box)
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
    height; default the photo's own); it may reach past the photo's edges (``cut`` pads
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
    x0, x1 = within(x0, x1, w)
    y0, y1 = within(y0, y1, h)
    box = (round(x0), round(y0), round(x1), round(y1))
    if box[2] - box[0] >= w and box[3] - box[1] >= h:
        return (0, 0, w, h)
    return box


