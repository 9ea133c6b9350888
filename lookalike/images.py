"""Decode any photo robustly into an RGB image, or fail with a one-line reason.

EXIF orientation, grayscale/RGBA/P/CMYK/16-bit → RGB, PNG, WebP, GIF (first frame),
JPEG draft-mode downscaling for large photos, and a pixel limit against decompression bombs.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image

#: Default upper bound on width × height of a photo (about 8k × 11k).
DEFAULT_MAX_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)  # transparent pixels become white, like a shop page


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise ImageError(f"image file missing: {p}")
        if p.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        fp: BinaryIO | Path = p  # Pillow owns and closes the file after load()
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        fp = io.BytesIO(source)
    else:
        fp = source
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError("not an image, or corrupt beyond recognition "
                         "(unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large: {e}") from None
    except OSError as e:
        raise _decode_error(e) from None


def _decode_error(e: BaseException) -> ImageError:
    msg = str(e) or type(e).__name__
    if "truncat" in msg.lower():
        return ImageError(f"truncated image: {msg}")
    return ImageError(f"corrupt image: {msg}")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        scale = 257.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        g = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = a.max(initial=0)
        g = np.clip(np.rint(a * (255.0 if hi <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, BACKGROUND)
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes, file object or PIL image) into an upright RGB image.

    ``draft_size`` lets the JPEG decoder downscale by 2/4/8 while decoding, keeping at
    least that many pixels on the shorter side. Raises :class:`ImageError` with the reason.
    """
    img = opened = _open(source)
    try:
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageError(f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels "
                             f"(limit {max_pixels:,})")
        if draft_size and img.format == "JPEG":
            # keep the shorter side >= draft_size after the 1/2, 1/4, 1/8 scaling
            short = min(w, h)
            req = (max(draft_size, w * draft_size // short), max(draft_size, h * draft_size // short))
            img.draft("RGB", req)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # first frame of an animation
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombWarning as e:
        raise ImageError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(e) from None
    finally:
        if opened is not source and opened is not img:
            opened.close()


def to_model_input(img: Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image to ``size``×``size`` (whole image, no crop: garments keep their
    hems and collars) and return uint8 HWC pixels."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_model_input(source: ImageSource, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     preprocess: Callable[[Image.Image], Image.Image] | None = None
                     ) -> np.ndarray:
    """Decode ``source``, run ``preprocess`` (e.g. a :class:`~lookalike.preprocess.Preprocess`)
    on it, and return uint8 (size, size, 3) pixels ready for an embedder."""
    img = load_image(source, max_pixels=max_pixels, draft_size=size)
    return to_model_input(preprocess(img) if preprocess else img, size)
