"""Decode any photo robustly into an RGB image, or fail with a one-line reason.

EXIF orientation, grayscale/RGBA/P/CMYK/16-bit → RGB, PNG, WebP, GIF (first frame),
JPEG draft-mode downscaling for large photos, and a pixel limit against decompression bombs.
Plain colour JPEGs can be decoded by OpenCV instead of Pillow (same pixels, less time).
A photo is a local path or a filesystem URI (``file://``, ``s3://``, ``gs://``, ``hdfs://``
through pyarrow; any other fsspec protocol when fsspec is installed).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageError, ImageTooLargeError, LookalikeError

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image

#: Default upper bound on width × height of a photo (about 8k × 11k).
DEFAULT_MAX_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)  # transparent pixels become white, like a shop page
DECODERS = ("pillow", "opencv")  # opencv: plain colour JPEGs only, the rest goes to Pillow
ORIENTATION = 0x0112  # the EXIF orientation tag
#: how a photo that is not square becomes the embedder's square: ``squash`` (resize the whole
#: photo, distorting it), ``crop`` (the centre square of the short side), ``pad`` (a square
#: filled around the photo with its border's colour)
FITS = ("squash", "crop", "pad")
#: extra views a query photo can be embedded from (test-time augmentation), averaged with the
#: photo itself: ``flip`` (mirrored left to right), ``zoom`` (the centre 80 % of each side)
VIEWS = ("flip", "zoom")
ZOOM = 0.8


def is_uri(location: object) -> bool:
    """True for ``scheme://…`` (a photo on a filesystem other than the local one)."""
    return isinstance(location, str) and "://" in location[:32]


def join_location(root: str | os.PathLike, rel: str) -> str | Path:
    """``rel`` under ``root`` (a folder or a URI); an absolute path or URI stays as it is."""
    if is_uri(rel) or Path(rel).is_absolute():
        return rel if is_uri(rel) else Path(rel)
    if is_uri(root):
        return f"{str(root).rstrip('/')}/{rel}"
    return Path(root) / rel


def _uri_bytes(uri: str) -> bytes:
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError):  # a protocol pyarrow lacks: try fsspec
        try:
            import fsspec
        except ImportError:
            raise ImageError(f"cannot read {uri}: unknown filesystem (install fsspec and its "
                             "driver for this protocol)") from None
        try:
            with fsspec.open(uri, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError(f"image file missing: {uri}") from None
        except (OSError, ValueError, ImportError) as e:
            raise ImageError(f"cannot read {uri}: {e}") from None
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise ImageError(f"image file missing: {uri}")
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, pa.ArrowException) as e:
        raise ImageError(f"cannot read {uri}: {e}") from None


def read_bytes(location: str | os.PathLike) -> bytes:
    """The bytes of a photo file: a local path or a filesystem URI. Raises
    :class:`ImageError` naming the file when it is missing, unreadable or empty."""
    if is_uri(location):
        data = _uri_bytes(str(location))
    else:
        p = Path(location)
        if not p.is_file():
            raise ImageError(f"image file missing: {p}")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read {p}: {e}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def file_digest(data: bytes) -> str:
    """SHA-1 of a photo file's bytes: what an index stores to notice a changed photo (a build
    and ``lookalike add`` must compute it alike)."""
    return hashlib.sha1(data).hexdigest()


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if is_uri(source):
        source = read_bytes(source)
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
        raise ImageTooLargeError(f"image too large: {e}") from None
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


def _jpeg_scale(size: tuple[int, int], req: tuple[int, int]) -> int:
    """The 1/s downscaling Pillow's JPEG draft mode picks for ``req``: the largest s of 8, 4,
    2, 1 that keeps both sides at least ``req``."""
    fits = min(size[0] // req[0], size[1] // req[1])
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _draft_request(size: tuple[int, int], draft_size: int) -> tuple[int, int]:
    """The size asked of JPEG draft mode: the shorter side stays >= ``draft_size`` after the
    1/2, 1/4, 1/8 scaling."""
    w, h = size
    short = min(w, h)
    return max(draft_size, w * draft_size // short), max(draft_size, h * draft_size // short)


def decoded_pixels(size: tuple[int, int], fmt: str | None, draft_size: int | None) -> int:
    """The pixels a photo of ``size`` and format ``fmt`` is decoded at (a JPEG at the scale
    draft mode reaches for ``draft_size``)."""
    w, h = size
    if fmt == "JPEG" and draft_size:
        s = _jpeg_scale(size, _draft_request(size, draft_size))
        return (w // s) * (h // s)
    return w * h


def _opencv_rgb(data: bytes, max_pixels: int, draft_size: int | None) -> np.ndarray | None:
    """``data``, a plain colour JPEG, decoded by OpenCV at the scale Pillow's draft mode would
    use (libjpeg-turbo downscaling in both), as RGB pixels; or ``None`` where Pillow must decode it:
    another format or colour mode, an EXIF rotation, a size outside the limits, no
    end-of-image marker (a truncated file must fail with Pillow's reason), or any failure."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = Image.open(io.BytesIO(data))  # the header only: size, mode, EXIF
    except Exception:  # noqa: BLE001 (Pillow's path reports it)
        return None
    w, h = head.size
    if (head.format != "JPEG" or head.mode != "RGB" or not 0 < w * h <= max_pixels
            or ("exif" in head.info and head.getexif().get(ORIENTATION, 1) != 1)):
        return None
    import cv2

    s = _jpeg_scale(head.size, _draft_request(head.size, draft_size)) if draft_size else 1
    flag = {1: 0, 2: 16, 4: 32, 8: 64}[s]  # cv2.IMREAD_REDUCED_*'s scale bits
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8),
                       flag | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if rgb is None or rgb.shape != ((h + s - 1) // s, (w + s - 1) // s, 3):
        return None
    return rgb


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
            raise ImageTooLargeError(f"image too large: {w}x{h} = {w * h:,} pixels "
                             f"(limit {max_pixels:,})")
        if draft_size and img.format == "JPEG":
            img.draft("RGB", _draft_request(img.size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # first frame of an animation
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombWarning as e:
        raise ImageTooLargeError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _decode_error(e) from None
    finally:
        if opened is not source and opened is not img:
            opened.close()


def fit_square(img: Image.Image, fit: str) -> Image.Image:
    """``img`` made square as ``fit`` says (one of :data:`FITS`); a square photo, or
    ``squash``, returns it unchanged (the resize to the model's size squashes it)."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    w, h = img.size
    if w == h or fit == "squash":
        return img
    side = min(w, h) if fit == "crop" else max(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    if fit == "crop":
        return img.crop((x, y, x + side, y + side))
    out = Image.new("RGB", (side, side), border_colour(img))
    out.paste(img, (-x, -y))
    return out


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """The median colour of a photo's outermost row and column of pixels on every side."""
    a = np.asarray(img.convert("RGB"))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    r, g, b = (int(v) for v in np.median(edge, axis=0))
    return r, g, b


def to_model_input(img: Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image to ``size``×``size`` (the whole image: one that is not square is
    squashed, unless :func:`fit_square` made it square first) and return uint8 HWC pixels."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_model_input(source: ImageSource, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     preprocess: Callable[[Image.Image], Image.Image] | None = None,
                     decoder: str = "pillow", fit: str = "squash") -> np.ndarray:
    """Decode ``source``, run ``preprocess`` (e.g. a :class:`~lookalike.ingest.preprocess.Preprocess`)
    on it, make it square as ``fit`` says (:func:`fit_square`) and return uint8 (size, size, 3)
    pixels ready for an embedder.

    ``decoder="opencv"`` decodes plain colour JPEGs given as bytes, when there is no
    preprocessing, with OpenCV (the same pixels with less overhead, see
    :mod:`lookalike.ingest.decoding`); everything else goes to Pillow."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "opencv" and preprocess is None and isinstance(source, bytes):
        rgb = _opencv_rgb(source, max_pixels, size)
        if rgb is not None:
            if rgb.shape[:2] == (size, size):
                return rgb
            return to_model_input(fit_square(Image.fromarray(rgb), fit), size)
    return to_model_input(_square(source, size, max_pixels, preprocess, fit), size)


def _square(source: ImageSource, size: int, max_pixels: int,
            preprocess: Callable[[Image.Image], Image.Image] | None, fit: str) -> Image.Image:
    """``source`` decoded by Pillow, preprocessed and made square: the photo the model sees,
    before its resize."""
    img = load_image(source, max_pixels=max_pixels, draft_size=size)
    return fit_square(preprocess(img) if preprocess else img, fit)


def parse_views(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"flip,zoom"``, ``["flip"]``, ``"none"`` or ``None`` → the views, in :data:`VIEWS`
    order."""
    names = (text or "").split(",") if isinstance(text, str) or text is None else list(text)
    names = [n.strip().lower() for n in names if n.strip() and n.strip().lower() != "none"]
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(VIEWS)} or none")
    return tuple(v for v in VIEWS if v in names)


def load_model_views(source: ImageSource, size: int, views: Sequence[str], *,
                     max_pixels: int = DEFAULT_MAX_PIXELS,
                     preprocess: Callable[[Image.Image], Image.Image] | None = None,
                     fit: str = "squash") -> np.ndarray:
    """uint8 (1 + len(views), size, size, 3): the photo as :func:`load_model_input` makes it,
    then each of ``views`` of it (decoded once)."""
    img = _square(source, size, max_pixels, preprocess, fit)
    out = [img]
    for v in views:
        if v == "flip":
            out.append(img.transpose(Image.FLIP_LEFT_RIGHT))
        elif v == "zoom":
            w, h = img.size
            dx, dy = round(w * (1 - ZOOM) / 2), round(h * (1 - ZOOM) / 2)
            out.append(img.crop((dx, dy, w - dx, h - dy)))
        else:
            raise ValueError(f"unknown view {v!r}; choose from {', '.join(VIEWS)}")
    return np.stack([to_model_input(i, size) for i in out])


def query_views(image: ImageSource, size: int, views: Sequence[str] | str | None, *,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                preprocess: Callable[[Image.Image], Image.Image] | None = None) -> np.ndarray:
    """:func:`load_model_views` of a query photo, its ``views`` checked (lookalike.errors
    kinds, not ValueError) and its decoding errors naming the photo."""
    try:
        views = parse_views(views)
    except ValueError as e:
        raise LookalikeError(str(e)) from None
    try:
        return load_model_views(image, size, views, max_pixels=max_pixels,
                                preprocess=preprocess)
    except ImageError as e:
        name = f"photo {image}" if isinstance(image, (str, os.PathLike)) else "the photo"
        raise type(e)(f"{name}: {e}") from None  # the same kind, named
