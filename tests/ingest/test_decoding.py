"""The two photo decoders: OpenCV gives Pillow's pixels (within one level) on every kind of
photo, fails where Pillow fails, and is chosen only by measurement."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from lookalike import ImageError, read_catalog
from lookalike.cli import cli
from lookalike.embed.local import embed_images
from lookalike.embedders import create_embedder
from lookalike.ingest import images as images_module
from lookalike.ingest.decoding import choose_decoder, compare_decoders
from lookalike.ingest.images import load_model_input

from ..conftest import MYNTRA


def _jpeg(size: tuple[int, int], **save: object) -> bytes:
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(2)).save(buf, "JPEG", **save)
    return buf.getvalue()


def _both(data: bytes, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    return (load_model_input(data, size, decoder="pillow"),
            load_model_input(data, size, decoder="opencv"))


@pytest.mark.parametrize("size,save", [
    ((224, 224), {"quality": 90}),                       # as most catalogues: decoded as is
    ((1000, 800), {"quality": 90}),                      # draft scale 1/2 (shorter side 800)
    ((1900, 2400), {"quality": 85}),                     # 1/8
    ((300, 700), {"quality": 95, "subsampling": 0}),     # 4:4:4, resized
    ((640, 480), {"quality": 80, "progressive": True}),  # progressive, 1/2
])
def test_opencv_matches_pillow_on_jpegs(size: tuple[int, int], save: dict) -> None:
    a, b = _both(_jpeg(size, **save))
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a.astype(int) - b).max() <= 1


def test_opencv_matches_pillow_on_catalogue_photos() -> None:
    if not MYNTRA.is_dir():
        pytest.skip(f"sample data not found at {MYNTRA}")
    files = sorted((MYNTRA / "images").iterdir())[::150][:64]
    worst = max(int(np.abs(a.astype(int) - b).max())
                for a, b in (_both(f.read_bytes()) for f in files))
    assert worst <= 1


def test_what_opencv_does_not_take_goes_to_pillow(tiny_catalog: Path, tmp_path: Path) -> None:
    d = tiny_catalog.parent / "photos"
    for name in ["alpha.png", "cmyk.jpg", "gray.jpg", "palette.gif", "exif.jpg", "P1-2.webp"]:
        a, b = _both((d / name).read_bytes(), 64)
        assert np.array_equal(a, b), name
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: OpenCV is told to ignore EXIF, so Pillow must decode it
    buf = io.BytesIO()
    img.rotate(90, expand=True).save(buf, "JPEG", exif=exif, quality=95)
    a, b = _both(buf.getvalue(), 32)
    assert np.array_equal(a, b) and a[16, 2, 0] > 200  # red strip back on the left


@pytest.mark.parametrize("name,reason", [
    ("truncated.jpg", "truncated"), ("notes.jpg", "unrecognised"), ("corrupt.png", "corrupt"),
    ("bomb.png", "too large"),
])
def test_opencv_fails_where_pillow_fails(tiny_catalog: Path, name: str, reason: str) -> None:
    data = (tiny_catalog.parent / "photos" / name).read_bytes()
    for decoder in ("pillow", "opencv"):
        with pytest.raises(ImageError, match=reason):
            load_model_input(data, 64, decoder=decoder)
    with pytest.raises(ImageError, match="too large"):  # the pixel limit holds for both
        load_model_input(_jpeg((300, 300)), 64, max_pixels=300 * 299, decoder="opencv")


def test_the_faster_decoder_is_chosen_only_if_its_pixels_match(monkeypatch) -> None:
    photos = [_jpeg((400, 300), quality=90) for _ in range(4)] + [_jpeg((224, 224))] * 4
    c = compare_decoders(photos, 224)
    assert c.photos == 8 and c.max_difference <= 1
    assert c.name == ("opencv" if c.opencv_ms < c.pillow_ms else "pillow")
    assert f"{c.pillow_ms:.3f} ms/photo with Pillow" in str(c)
    real = images_module._opencv_rgb

    def off_by_two(data: bytes, max_pixels: int, draft: int | None) -> np.ndarray | None:
        rgb = real(data, max_pixels, draft)
        return None if rgb is None else np.clip(rgb.astype(int) + 2, 0, 255).astype(np.uint8)

    monkeypatch.setattr(images_module, "_opencv_rgb", off_by_two)
    c = compare_decoders(photos, 224)
    assert c.name == "pillow" and c.max_difference == 2 and "differ" in c.reason
    assert choose_decoder([], 224).name == "pillow"


@pytest.mark.model
def test_builds_record_the_decoder_and_embeddings_do_not_depend_on_it(
        tiny_catalog: Path, tmp_path: Path) -> None:
    cat = read_catalog(tiny_catalog, id_column="sku", image_column="file")
    paths = [cat.image_file(i) for i in range(len(cat))]
    emb = create_embedder("efficientnet-lite0")
    a = embed_images(emb, paths, decoder="pillow")
    b = embed_images(emb, paths, decoder="opencv")
    assert a.decoder is None and b.skipped == a.skipped
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    r = CliRunner().invoke(cli, ["build", str(tiny_catalog), "-o", str(tmp_path / "ix"), "-q",
                                 "--id-column", "sku", "--image-column", "file"])
    assert r.exit_code == 0, r.output
    chosen = json.loads((tmp_path / "ix" / "manifest.json").read_text())["decoder"]
    assert chosen["name"] in ("pillow", "opencv") and chosen["photos"] > 0
    assert f"decoder {chosen['name']}: " in r.output
    r = CliRunner().invoke(cli, ["build", str(tiny_catalog), "-o", str(tmp_path / "ix2"), "-q",
                                 "--id-column", "sku", "--image-column", "file",
                                 "--decoder", "pillow"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ix2" / "manifest.json").read_text())["decoder"] == {
        "name": "pillow"}
