"""Garment focus: face, crop and background steps on photos with known boxes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from lookalike import Index, build_index, read_catalog
from lookalike.cli import cli
from lookalike.errors import LookalikeError
from lookalike.ingest.boxes import NEUTRAL
from lookalike.ingest.faces import detect_faces
from lookalike.ingest.images import load_model_input
from lookalike.ingest.preprocess import STEPS, Preprocess

from ..conftest import MYNTRA, STREET, build_tiny, needs_data

ALL = Preprocess(STEPS)
BOX = (60, 90, 170, 230)  # x0, y0, x1, y1 of the object in the synthetic photos


def on_backdrop(backdrop: str, size: tuple[int, int] = (240, 300), box=BOX,
                color=(200, 30, 40)) -> Image.Image:
    """A coloured rectangle at ``box`` on a plain or noisy backdrop."""
    rng = np.random.default_rng(0)
    w, h = size
    if backdrop == "plain":
        a = np.full((h, w, 3), 240, np.uint8)
    else:  # a busy floor: coarse random blotches in dull colours
        blotches = rng.integers(80, 190, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        a = np.kron(blotches, np.ones((8, 8, 1), np.uint8))[:h, :w]
        a = (a.astype(np.int16) + rng.integers(-20, 20, a.shape)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=color)
    return img


def drawn_face(size: int = 224, r: int = 26, cy: int = 60, height: int = 0) -> Image.Image:
    """A cartoon face (skin oval, hair, eyes, brows, nose, mouth) above a blue shirt."""
    cx = size // 2
    img = Image.new("RGB", (size, height or size), "white")
    d = ImageDraw.Draw(img)
    d.ellipse([cx - r, cy - r * 1.3, cx + r, cy + r * 1.3], fill=(224, 172, 140))
    d.rectangle([cx - r, cy - r * 1.4, cx + r, cy - r * 0.9], fill=(60, 40, 30))
    for ex in (cx - r * 0.45, cx + r * 0.45):
        d.ellipse([ex - r * 0.22, cy - r * 0.35, ex + r * 0.22, cy - r * 0.12], fill=(40, 30, 30))
        d.rectangle([ex - r * 0.3, cy - r * 0.6, ex + r * 0.3, cy - r * 0.5], fill=(70, 50, 40))
    d.rectangle([cx - r * 0.08, cy - r * 0.2, cx + r * 0.08, cy + r * 0.3], fill=(235, 190, 160))
    d.ellipse([cx - r * 0.4, cy + r * 0.5, cx + r * 0.4, cy + r * 0.72], fill=(150, 60, 60))
    d.rectangle([cx - 40, cy + r * 1.5, cx + 40, (height or size) - 20], fill=(30, 60, 160))
    return img.filter(ImageFilter.GaussianBlur(1.5))


def red_box(img: Image.Image) -> tuple[int, int, int, int]:
    """Where the red object is in ``img``."""
    a = np.asarray(img).astype(int)
    ys, xs = np.nonzero((np.abs(a - [200, 30, 40]) < 25).all(axis=2))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("backdrop", ["plain", "noisy"])
def test_crop_keeps_the_whole_object_and_little_else(backdrop: str) -> None:
    img = on_backdrop(backdrop)
    out = Preprocess(("crop",)).apply(img)
    assert out.done["crop"], out.notes
    x0, y0, x1, y1 = red_box(out.image)
    ow, oh = BOX[2] - BOX[0], BOX[3] - BOX[1]
    assert (x1 - x0, y1 - y0) == (ow, oh)  # nothing of the object cut off
    w, h = out.image.size
    assert h < 0.75 * img.height and w == h  # square: the embedder's shape, nothing squashed
    assert oh / h > 0.8  # the object fills most of the crop
    own = replace(ALL, steps=("crop",), aspect=None).apply(img).image  # the photo's own shape
    assert abs(own.width / own.height - img.width / img.height) < 0.02
    assert red_box(own)[2] - red_box(own)[0] == ow


@pytest.mark.parametrize("backdrop", ["plain", "noisy"])
def test_background_becomes_neutral_and_the_object_stays(backdrop: str) -> None:
    img = on_backdrop(backdrop)
    out = Preprocess(("background",)).apply(img)
    assert out.done["background"], out.notes
    a = np.asarray(out.image).astype(int)
    assert out.image.size == img.size
    x0, y0, x1, y1 = BOX
    outside = np.ones(a.shape[:2], bool)
    outside[y0 - 12:y1 + 12, x0 - 12:x1 + 12] = False
    assert (a[outside] == NEUTRAL).all(axis=1).mean() > 0.97
    off = np.abs(a[y0:y1, x0:x1] - [200, 30, 40]).max(axis=2)
    assert off[3:-3, 3:-3].max() <= 2  # the mask works on 64 px: only the corners round off
    assert (off <= 10).mean() > 0.995


def test_a_drawn_face_is_painted_over_and_left_out_of_the_crop() -> None:
    img = drawn_face()
    faces = detect_faces(np.asarray(img))
    assert len(faces) == 1
    fx0, fy0, fx1, fy1 = faces[0]
    assert fx0 < 112 < fx1 and fy0 < 60 < fy1  # around the drawn face's centre
    low = drawn_face(cy=260, height=500)  # centre just below the middle: painted, not cut
    painted = Preprocess(("face",)).apply(low)
    assert painted.notes["face"] == "face painted over" and painted.image.size == low.size
    lowest = drawn_face(cy=400, height=500)  # faces are only looked for in the upper 60 %
    assert Preprocess(("face",)).apply(lowest).notes["face"] == "no face found"
    out = Preprocess(("face",)).apply(img)
    assert out.done["face"] and out.notes["face"] == "cut to the body below the face"
    a = np.asarray(out.image).astype(int)
    top = fy1 + 0.15 * (fy1 - fy0)  # the chin; 4 face heights would reach past the bottom
    assert abs(out.image.height - (224 - top)) <= 1 and abs(out.image.width - out.image.height) <= 1
    assert (np.abs(a - [224, 172, 140]).max(axis=2) < 30).mean() < 0.002  # no skin left
    assert ((a[..., 2] > 120) & (a[..., 0] < 80)).mean() > 0.3  # the shirt is
    both = ALL.apply(img)
    b = np.asarray(both.image).astype(int)
    skin = (np.abs(b - [224, 172, 140]).max(axis=2) < 30).mean()
    assert both.done["crop"] and skin < 0.002
    blue = (b[..., 2] > 120) & (b[..., 0] < 80)
    assert blue.mean() > 0.3  # the shirt is what is left


def test_no_face_is_a_no_op_with_a_reason() -> None:
    img = on_backdrop("plain")
    out = Preprocess(("face",)).apply(img)
    assert out.done == {"face": False} and out.notes["face"] == "no face found"
    assert out.image is img


@pytest.mark.parametrize("size,mode", [((1, 1), "RGB"), ((10000, 50), "RGB"), ((50, 10000), "RGB"),
                                       ((7, 300), "RGB"), ((240, 300), "L"), ((64, 64), "RGB")])
def test_odd_sizes_and_grayscale_never_fail(size: tuple[int, int], mode: str) -> None:
    img = Image.new(mode, size, 128)
    if min(size) > 20:
        img = on_backdrop("plain", size, box=(size[0] // 4, size[1] // 4, size[0] // 2,
                                               size[1] // 2)).convert(mode)
    out = ALL.apply(img)
    assert set(out.notes) == set(STEPS)
    assert out.image.mode == "RGB" and min(out.image.size) >= 1
    assert load_model_input(img, 32, preprocess=ALL).shape == (32, 32, 3)
    if min(size) < 8:
        assert not any(out.done.values()) and "too small" in out.notes["crop"]


def test_flat_photo_and_photo_filled_by_the_garment_are_no_ops() -> None:
    flat = ALL.apply(Image.new("RGB", (200, 200), (90, 120, 30)))
    assert not any(flat.done.values()) and "no garment" in flat.notes["crop"]
    full = ALL.apply(on_backdrop("plain", box=(0, 0, 240, 300)))
    assert not full.done["crop"] and not full.done["background"]


def test_a_failing_step_leaves_the_photo_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.ingest.preprocess as pre

    def broken(*args: object) -> None:
        raise RuntimeError("OpenCV(4) assertion failed")

    monkeypatch.setattr(pre, "detect_faces", broken)
    img = on_backdrop("plain")
    out = ALL.apply(img)
    assert out.notes["face"] == "failed: RuntimeError" and not out.done["face"]
    assert out.done["crop"] and out.done["background"]  # the other steps still ran
    monkeypatch.setattr(pre, "garment_mask", broken)
    out = ALL.apply(img)
    assert not any(out.done.values()) and out.notes["crop"] == "failed: RuntimeError"
    assert np.array_equal(np.asarray(out.image), np.asarray(img))


def test_steps_parse_in_one_order_and_unknown_steps_are_named() -> None:
    assert Preprocess.parse("background, crop,FACE").steps == STEPS
    assert Preprocess.parse("none").steps == () and not Preprocess.parse("")
    assert Preprocess.from_dict(ALL.to_dict()) == ALL and Preprocess.from_dict(None) == Preprocess()
    with pytest.raises(LookalikeError, match="'blur'.*face, crop, background"):
        Preprocess.parse("crop,blur")


@pytest.mark.slow
@pytest.mark.model
@needs_data(MYNTRA / "images", STREET / "images")
def test_real_photos() -> None:
    """A catalogue photo with a model, a shirt on a wooden floor, a watch on white."""
    model = Image.open(MYNTRA / "images" / "16498.jpg").convert("RGB")
    out = ALL.apply(model)
    assert out.notes["face"] == "cut to the body below the face" and out.done["background"]
    a = np.asarray(out.image).astype(int)
    red = (a[..., 0] > 150) & (a[..., 1] < 70)  # the red T-shirt stays, big
    assert red.mean() > 0.3
    street = Image.open(next((STREET / "images").glob("6050dd9d*"))).convert("RGB")
    s = ALL.apply(street)
    assert not s.done["face"] and s.done["crop"] and s.done["background"], s.notes
    assert "GrabCut" in s.notes["background"]
    b = np.asarray(s.image).astype(int)
    corners = np.concatenate([b[:10, :10], b[:10, -10:], b[-10:, :10], b[-10:, -10:]])
    assert (corners == NEUTRAL).all()  # the floor is gone
    watch = Preprocess(("face",)).apply(Image.open(MYNTRA / "images" / "11002.jpg").convert("RGB"))
    assert watch.notes["face"] == "no face found"


def test_index_records_the_steps_and_queries_get_them(tiny_catalog: Path, tmp_path: Path) -> None:
    cat = read_catalog(tiny_catalog, id_column="sku", image_column="file",
                       product_column="product")
    s = build_index(cat, tmp_path / "ix", model="color-histogram", preprocess="crop,background")
    m = json.loads((s.path / "manifest.json").read_text())
    assert m["preprocess"]["steps"] == ["crop", "background"]
    counts = m["preprocess"]["outcomes"]
    assert sum(counts["crop"].values()) == sum(counts["background"].values()) == s.items
    assert s.preprocess == counts
    ix = Index.open(s.path)
    assert ix.preprocess == Preprocess(("crop", "background"))
    photo = ix.image_path("P1-0")
    expected = ix.embedder(load_model_input(photo, ix.spec.input_size, preprocess=ix.preprocess)[None])
    assert np.allclose(ix.embed(photo), expected[0], atol=1e-6)
    assert np.allclose(ix.vector("P1-0"), expected[0], atol=1e-5)
    plain = ix.embedder(load_model_input(photo, ix.spec.input_size)[None])[0]
    assert float(plain @ expected[0]) < 0.999  # the steps did change the photo
    assert ix.search(photo, 1)[0].item_id == "P1-0"
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    client = TestClient(create_app(s.path))
    assert client.get("/health").json()["preprocess"] == ["crop", "background"]
    r = client.post("/search", files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
                    params={"k": 1})
    hit = r.json()["results"][0]
    assert hit["item_id"] == "P1-0" and hit["score"] == pytest.approx(1.0, abs=1e-5)  # not 0.999


def test_cli_build_and_preview(tiny_catalog: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = build_tiny(tiny_catalog, tmp_path / "ix", "--preprocess", "face,crop")
    assert r.exit_code == 0, r.output
    assert "preprocess face: 24 no face found" in r.output  # 30 rows, 6 unreadable
    assert Index.open(tmp_path / "ix").preprocess.steps == ("face", "crop")
    bad = runner.invoke(cli, ["build", str(tiny_catalog), "-o", str(tmp_path / "ix2"),
                              "--preprocess", "crop,sharpen"])
    assert bad.exit_code != 0 and "'sharpen'" in bad.output
    photos = [str(tiny_catalog.parent / "photos" / n) for n in ("P1-0.jpg", "P3-1.png")]
    r = runner.invoke(cli, ["preview-preprocess", *photos, "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    sheet = Image.open(tmp_path / "p.png")
    one_row = Image.open(tmp_path / "p.png").height // 2
    assert sheet.width > 4 * 160 and one_row > 160  # photo, 3 steps, all together; 2 rows
    r = runner.invoke(cli, ["preview-preprocess", *photos, "-o", str(tmp_path / "p.jpg")])
    assert r.exit_code != 0 and ".png" in r.output
