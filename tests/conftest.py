"""Shared fixtures: a private model cache and a small catalogue made with PIL, bad files included."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw

from lookalike.cli import cli

DATASETS = Path(os.environ.get("LOOKALIKE_DATASETS",
                               Path(__file__).resolve().parents[2] / "shared" / "datasets"))
MYNTRA = DATASETS / "myntra-9k"
STREET = DATASETS / "street-photos"
ARTIFACTS = Path(os.environ.get("LOOKALIKE_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))

CHROMIUM = os.environ.get("LOOKALIKE_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
# CI installs Chromium and sets LOOKALIKE_REQUIRE_BROWSER=1 so that browser tests cannot skip there
needs_browser = [pytest.mark.browser, pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not os.environ.get("LOOKALIKE_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")]


def needs_data(*paths: Path) -> pytest.MarkDecorator:
    """Skip, saying why, where the sample data (../shared/datasets, or $LOOKALIKE_DATASETS)
    is not there."""
    missing = [p for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"sample data not found: {missing[0]} "
                              "(set LOOKALIKE_DATASETS)" if missing else "")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX exports go to a cache shared by the whole run, never to the user's ~/.cache."""
    os.environ.setdefault("LOOKALIKE_CACHE", str(tmp_path_factory.mktemp("lookalike-cache")))


def garment(color: tuple[int, int, int], shape: str, size: int = 96, seed: int = 0) -> Image.Image:
    """A simple product photo: one coloured shape on a light background with a little noise."""
    rng = np.random.default_rng(seed)
    bg = np.full((size, size, 3), 235, np.uint8) + rng.integers(0, 12, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    m = size // 6
    if shape == "shirt":
        d.rectangle([m * 2, m, size - m * 2, size - m], fill=color)
        d.rectangle([m, m, size - m, m * 2], fill=color)
    elif shape == "shoe":
        d.ellipse([m, size // 2, size - m, size - m], fill=color)
    else:  # bag
        d.rectangle([m, m * 2, size - m, size - m], fill=color)
        d.arc([m * 2, m // 2, size - m * 2, m * 3], 180, 360, fill=color, width=4)
    return img


def png_bomb() -> bytes:
    """A valid PNG header announcing 60000×60000 pixels (the decompression-bomb case)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


PRODUCTS = [  # product id, articleType, colour name, rgb, shape
    ("P1", "Shirts", "Red", (200, 30, 30), "shirt"),
    ("P2", "Shirts", "Blue", (30, 40, 200), "shirt"),
    ("P3", "Shoes", "Red", (190, 40, 40), "shoe"),
    ("P4", "Shoes", "Black", (20, 20, 20), "shoe"),
    ("P5", "Bags", "Blue", (40, 50, 190), "bag"),
    ("P6", "Bags", "Black", (25, 25, 25), "bag"),
]


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Path:
    """18 good photos (6 products × 3 views in assorted formats) plus 6 bad files.

    Columns: sku, product, type, colour, gender, file.
    """
    return make_tiny_catalog(tmp_path)


def make_tiny_catalog(tmp_path: Path) -> Path:
    img_dir = tmp_path / "photos"
    img_dir.mkdir()
    rows = []
    for p, (pid, kind, colour, rgb, shape) in enumerate(PRODUCTS):
        base = garment(rgb, shape, seed=p)
        views = [base, base.transpose(Image.FLIP_LEFT_RIGHT), base.crop((6, 6, 90, 90))]
        for v, img in enumerate(views):
            sku = f"{pid}-{v}"
            fmt = ["jpg", "png", "webp"][v]
            name = f"{sku}.{fmt}"
            img.save(img_dir / name)
            rows.append((sku, pid, kind, colour, "Men" if p % 2 else "Women", f"photos/{name}"))
    # odd but valid formats, each an extra photo of some product
    g = garment((200, 30, 30), "shirt", seed=10)
    g.convert("RGBA").save(img_dir / "alpha.png")
    g.convert("CMYK").save(img_dir / "cmyk.jpg")
    g.convert("L").save(img_dir / "gray.jpg")
    g.convert("P").save(img_dir / "palette.gif")
    rot = g.rotate(90, expand=True)  # stored rotated, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6
    rot.save(img_dir / "exif.jpg", exif=exif)
    arr16 = (np.asarray(g.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(img_dir / "sixteen.png")
    for i, name in enumerate(["alpha.png", "cmyk.jpg", "gray.jpg", "palette.gif", "exif.jpg",
                              "sixteen.png"]):
        rows.append((f"odd-{i}", "P1", "Shirts", "Red", "Women", f"photos/{name}"))
    # bad files
    buf = io.BytesIO()
    garment((0, 200, 0), "shirt").save(buf, "JPEG")
    (img_dir / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (img_dir / "empty.jpg").write_bytes(b"")
    (img_dir / "notes.jpg").write_text("this is not a picture\n")
    (img_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (img_dir / "bomb.png").write_bytes(png_bomb())
    for i, name in enumerate(["truncated.jpg", "empty.jpg", "notes.jpg", "corrupt.png",
                              "bomb.png", "does-not-exist.jpg"]):
        rows.append((f"bad-{i}", f"B{i}", "Shirts", "Green", "Men", f"photos/{name}"))
    df = pd.DataFrame(rows, columns=["sku", "product", "type", "colour", "gender", "file"])
    path = tmp_path / "catalog.csv"
    df.to_csv(path, index=False)
    return path


BAD_REASONS = {
    "bad-0": "truncated",
    "bad-1": "empty file",
    "bad-2": "not an image",
    "bad-3": "",  # corrupt: any reason
    "bad-4": "too large",
    "bad-5": "image file missing",
}


MODELS = ("mobilenet-v2", "color-histogram")  # a CNN and the baseline


@pytest.fixture(scope="session")
def two_indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two indexes of the small catalogue (a CNN and the colour histogram), a query set made
    of some of its photos, a label mapping and a triplet file."""
    root = tmp_path_factory.mktemp("quality")
    from lookalike import build_index, read_catalog

    csv = make_tiny_catalog(root)
    cat = read_catalog(csv, id_column="sku", image_column="file", product_column="product")
    paths = {}
    for m in MODELS:
        build_index(cat, root / m, model=m)
        paths[m] = root / m
    queries = pd.DataFrame({
        "image_path": ["photos/P1-0.jpg", "photos/P3-1.png", "photos/P5-2.webp", "photos/P2-0.jpg",
                       "photos/empty.jpg"],
        "label": ["top", "footwear", "bag", "top", "top"],
    })
    queries.to_csv(root / "queries.csv", index=False)
    (root / "map.yaml").write_text("attribute: type\nlabels:\n  top: [Shirts]\n"
                                   "  footwear: Shoes\n")
    pd.DataFrame({"query_id": ["P1-0", "P3-0", "P5-0"], "positive_id": ["P1-1", "P3-1", "P5-1"],
                  "negative_id": ["P6-0", "P1-0", "P2-0"],
                  "positive_type": ["same_product"] * 3,
                  "negative_type": ["in_class", "out_of_class", "out_of_class"]}
                 ).to_parquet(root / "triplets.parquet")
    paths.update(root=root, csv=csv, queries=root / "queries.csv", mapping=root / "map.yaml",
                 triplets=root / "triplets.parquet")
    return paths


def build_tiny(catalog: Path, out: Path, *options: str) -> Result:
    """``lookalike build`` of the tiny catalogue with the cheap embedder."""
    return CliRunner().invoke(cli, ["build", str(catalog), "-o", str(out), "-q", "--model",
                                    "color-histogram", "--id-column", "sku", "--image-column",
                                    "file", *options])


SLICE = 2000  # items of myntra-9k in the scale-out agreement tests


@pytest.fixture(scope="session")
def myntra_slice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded 2,000-item slice of myntra-9k and its local exact index (efficientnet-lite0):
    the reference the Ray engine and the Milvus backend are compared with."""
    from lookalike.build import build_index
    from lookalike.ingest.catalog import read_catalog

    if not MYNTRA.is_dir():
        pytest.skip(f"sample data not found at {MYNTRA}")
    root = tmp_path_factory.mktemp("myntra-slice")
    df = pd.read_csv(MYNTRA / "catalog.csv")
    df = df.iloc[np.sort(np.random.default_rng(7).permutation(len(df))[:SLICE])]
    csv = root / "catalog.csv"
    df.to_csv(csv, index=False)
    build_index(read_catalog(csv, MYNTRA), root / "exact")
    return {"csv": csv, "exact": root / "exact"}



def serve(folder: Path, *options: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen, str]:
    """``lookalike serve FOLDER --port 0`` in a subprocess: the server binds a free port itself
    (no port picked free and closed again, which another process may take meanwhile) and says
    which; returns the process and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", str(folder),
                             "--port", "0", *options], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"at (http://\S+?)/ ", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("the server did not start")
