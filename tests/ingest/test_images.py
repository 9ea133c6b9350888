from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageError
from lookalike.ingest.images import load_image, load_model_input

from ..conftest import garment, png_bomb


def test_odd_formats_become_rgb(tiny_catalog: Path) -> None:
    d = tiny_catalog.parent / "photos"
    for name in ["alpha.png", "cmyk.jpg", "gray.jpg", "palette.gif", "exif.jpg", "sixteen.png",
                 "P1-2.webp"]:
        img = load_image(d / name)
        assert img.mode == "RGB", name
        assert img.size in ((96, 96), (84, 84)), name


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    stored = img.rotate(90, expand=True)  # 20 wide × 40 high, red at the bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "r.jpg", exif=exif, quality=95)
    up = load_image(tmp_path / "r.jpg")
    assert up.size == (40, 20)
    a = np.asarray(up)
    assert a[10, 2, 0] > 200 and a[10, 2, 1] < 60  # red back on the left
    assert a[10, 35].min() > 200


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "g.png")  # mid grey
    a = np.asarray(load_image(tmp_path / "g.png"))
    assert a.shape == (8, 8, 3) and abs(int(a[0, 0, 0]) - 128) <= 1


def test_transparency_becomes_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, _, b = np.asarray(load_image(tmp_path / "a.gif"))[0, 0].tolist()
    assert r > 200 and b < 50


@pytest.mark.parametrize("name,reason", [
    ("truncated.jpg", "truncated"), ("empty.jpg", r"empty file \(0 bytes\)"),
    ("notes.jpg", "not an image.*unrecognised"), ("corrupt.png", "corrupt"), ("bomb.png", "too large"),
    ("does-not-exist.jpg", "image file missing"),
])
def test_bad_files_raise_with_reason(tiny_catalog: Path, name: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        load_image(tiny_catalog.parent / "photos" / name)


def test_pixel_limit_and_bytes_sources(tmp_path: Path) -> None:
    garment((1, 2, 3), "bag", size=100).save(tmp_path / "b.png")
    with pytest.raises(ImageError, match=r"too large: 100x100 = 10,000 pixels \(limit 5,000\)"):
        load_image(tmp_path / "b.png", max_pixels=5000)
    with pytest.raises(ImageError, match="too large"):
        load_image(png_bomb())
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    assert load_image((tmp_path / "b.png").read_bytes()).size == (100, 100)


def test_model_input_shape_and_draft(tmp_path: Path) -> None:
    garment((200, 10, 10), "shirt", size=1200).save(tmp_path / "big.jpg", quality=90)
    x = load_model_input(tmp_path / "big.jpg", 224)
    assert x.shape == (224, 224, 3) and x.dtype == np.uint8
    ref = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((224, 224),
                                                                           Image.BILINEAR))
    assert np.abs(x.astype(int) - ref).mean() < 3  # draft decoding changes little


def test_photos_are_read_through_filesystem_uris(tmp_path: Path) -> None:
    from lookalike.ingest.images import read_bytes

    garment((10, 20, 200), "shirt").save(tmp_path / "a.png")
    uri = (tmp_path / "a.png").as_uri()  # file:///…, through pyarrow's filesystem layer
    assert read_bytes(uri) == (tmp_path / "a.png").read_bytes()
    assert np.array_equal(load_model_input(uri, 32), load_model_input(tmp_path / "a.png", 32))
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open("memory://shop/b.png", "wb") as f:  # a protocol only fsspec knows
        f.write((tmp_path / "a.png").read_bytes())
    assert load_image("memory://shop/b.png").size == (96, 96)
    with pytest.raises(ImageError, match=r"image file missing: file://.*/nope\.png"):
        read_bytes((tmp_path / "nope.png").as_uri())
    with pytest.raises(ImageError, match="image file missing: memory://shop/nope.png"):
        read_bytes("memory://shop/nope.png")
    with pytest.raises(ImageError, match="cannot read nosuchfs://x/a.png"):
        read_bytes("nosuchfs://x/a.png")


def test_a_catalogue_with_a_uri_image_root(tmp_path: Path) -> None:
    from lookalike import read_catalog

    (tmp_path / "c.csv").write_text("id,image_path,colour\n1,a.png,red\n2,,blue\n")
    cat = read_catalog(tmp_path / "c.csv", "s3://bucket/photos/")  # nothing is fetched here
    assert cat.image_file(0) == "s3://bucket/photos/a.png"
    assert list(cat.missing) == [1] and "no image path" in cat.missing[1]
