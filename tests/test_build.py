"""End to end on a small catalogue: build, open, search, neighbours, gallery, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lookalike import (
    Index,
    IndexFormatError,
    LookalikeError,
    UnknownItemError,
    build_index,
    read_catalog,
)
from lookalike.cli import cli
from lookalike.embedders import create_embedder
from lookalike.ingest.images import load_model_input
from lookalike.store import folder as store

from .conftest import BAD_REASONS, build_tiny

MODEL = "mobilenet-v2"  # the fastest backbone keeps the suite quick; all are tested in test_embedders


@pytest.fixture
def catalog(tiny_catalog: Path):
    return read_catalog(tiny_catalog, id_column="sku", image_column="file",
                        product_column="product")


@pytest.fixture
def index_dir(catalog, tmp_path: Path) -> Path:
    build_index(catalog, tmp_path / "index", model=MODEL)
    return tmp_path / "index"


@pytest.mark.model
def test_bad_photos_skipped_with_reasons_and_rows_aligned(catalog, index_dir: Path) -> None:
    ix = Index.open(index_dir)
    m = ix.manifest
    assert m["counts"] == {"catalog_rows": 30, "items": 24, "skipped": 6, "built": 24}
    reasons = {s["item_id"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == set(BAD_REASONS)
    for item, expected in BAD_REASONS.items():
        assert expected in reasons[item], (item, reasons[item])
    assert m["embedder"]["name"] == MODEL and m["preprocessing"]["input_size"] == 224
    assert {"numpy", "onnxruntime", "faiss-cpu", "torch"} <= set(m["versions"])
    # every stored vector is the vector of that item's own photo, computed alone
    e = create_embedder(MODEL)
    for item_id in ["P1-0", "P3-2", "odd-3", "P6-2"]:
        alone = e(load_model_input(ix.image_path(item_id), 224)[None])[0]
        np.testing.assert_allclose(ix.vector(item_id), alone, atol=1e-5)
    assert ix.items["row"].tolist() == [r for r in range(30) if r < 24]
    with pytest.raises(UnknownItemError, match="bad-1.*skipped.*empty file"):
        ix.similar("bad-1")
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        ix.similar("nope")


@pytest.mark.model
def test_similar_search_filters_products(index_dir: Path, tiny_catalog: Path) -> None:
    ix = Index.open(index_dir, model=MODEL)
    hits = ix.similar("P1-0", k=5)
    assert len(hits) == 5 and "P1-0" not in [h.item_id for h in hits]
    assert hits[0].item_id.startswith("P1-") or hits[0].item_id.startswith("odd-")
    assert hits[0].metadata["type"] == "Shirts" and hits[0].metadata["product_id"] == "P1"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    shoes = ix.similar("P1-0", k=20, where={"type": "Shoes"})
    assert len(shoes) == 6 and all(h.metadata["type"] == "Shoes" for h in shoes)
    grouped = ix.similar("P1-0", k=10, per_product=True)
    products = [h.metadata["product_id"] for h in grouped]
    assert len(products) == len(set(products)) == 5 and "P1" not in products
    photo = tiny_catalog.parent / "photos" / "P4-0.jpg"
    found = ix.search(photo, k=3)
    assert found[0].item_id == "P4-0" and found[0].score > 0.999
    assert ix.search(photo.read_bytes(), k=1)[0].item_id == "P4-0"


@pytest.mark.model
def test_cli_end_to_end(tiny_catalog: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    out = tmp_path / "ix"
    r = run(cli, ["build", str(tiny_catalog), "--out", str(out), "--id-column", "sku",
                  "--image-column", "file", "--product-column", "product", "-m", MODEL, "-q"])
    assert r.exit_code == 0, r.output
    assert "24 items embedded with mobilenet-v2, 6 skipped, of 30 catalogue rows" in r.output
    assert "skipped bad-4 (row 28): image too large" in r.output
    r = run(cli, ["similar", str(out), "P2-0", "-k", "3"])
    assert r.exit_code == 0
    # the attributes that tell items apart best, most distinct values first
    assert r.output.splitlines()[0].split() == ["rank", "item_id", "score", "type", "colour",
                                                "gender"]
    assert len(r.output.splitlines()) == 4
    r = run(cli, ["similar", str(out), "P2-0", "-k", "4", "--json", "--where", "colour=Blue",
                  "--per-product"])
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert [x["rank"] for x in lines] == [1] and lines[0]["metadata"]["product_id"] == "P5"
    r = run(cli, ["search", str(out), "--image", str(tiny_catalog.parent / "photos/P5-1.png"),
                  "-k", "2", "--json"])
    assert json.loads(r.output.splitlines()[0])["item_id"] == "P5-1"
    nb = tmp_path / "nb.csv"
    r = run(cli, ["neighbors", str(out), "-k", "4", "-o", str(nb), "-q"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(nb, dtype={"item_id": str, "neighbor_id": str})
    assert len(df) == 24 * 4 and set(df.item_id) == set(Index.open(out).items.item_id)
    for fmt in ("png", "html"):
        g = tmp_path / f"g.{fmt}"
        r = run(cli, ["gallery", str(out), "P1-0", "P4-1", "--image",
                      str(tiny_catalog.parent / "photos/alpha.png"), "-k", "4", "-o", str(g)])
        assert r.exit_code == 0, r.output
        assert g.stat().st_size > 1000
    r = run(cli, ["info", str(out)])
    assert "24 items now; the build skipped 6 of 30 catalogue rows" in r.output
    # errors: one line, non-zero exit
    r = run(cli, ["similar", str(out), "zzz"])
    assert r.exit_code == 1 and "Error: unknown item id 'zzz'" in r.output
    r = run(cli, ["similar", str(tmp_path), "P1-0"])
    assert r.exit_code == 1 and "is not a lookalike index" in r.output
    bad = tiny_catalog.parent / "photos" / "truncated.jpg"
    r = run(cli, ["search", str(out), "--image", str(bad)])
    assert r.exit_code == 1 and f"Error: photo {bad}: truncated image" in r.output
    r = run(cli, ["build", str(tiny_catalog), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "the columns are: sku, product" in r.output
    assert "(--id-column of catalog.csv)" in r.output  # the CLI names its own flag


@pytest.mark.model
def test_open_errors(index_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="built with 'mobilenet-v2', not 'efficientnet-lite0'"):
        Index.open(index_dir, model="efficientnet-lite0")
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        Index.open(tmp_path)
    with pytest.raises(IndexFormatError, match="no such folder"):
        Index.open(tmp_path / "missing")
    (index_dir / "embeddings.npy").unlink()
    with pytest.raises(IndexFormatError, match="incomplete: embeddings.npy is missing"):
        Index.open(index_dir)


@pytest.mark.model
def test_crash_mid_build_leaves_previous_index(catalog, index_dir: Path, monkeypatch) -> None:
    before = Index.open(index_dir).similar("P2-0", 3)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.faiss, "write_index", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(catalog, index_dir, model="efficientnet-lite0")
    assert Index.open(index_dir).similar("P2-0", 3) == before  # old index untouched
    assert [p.name for p in index_dir.parent.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(RuntimeError):
        build_index(catalog, index_dir.parent / "fresh", model=MODEL)
    assert not (index_dir.parent / "fresh").exists()  # no half index


@pytest.mark.model
def test_refuses_to_overwrite_other_folders(catalog, tmp_path: Path) -> None:
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(IndexFormatError, match="exists and is not a lookalike index"):
        build_index(catalog, precious, model=MODEL)
    assert (precious / "thesis.txt").read_text() == "years of work"


@pytest.mark.model
def test_sigkill_mid_write_leaves_previous_index(tiny_catalog: Path, index_dir: Path) -> None:
    """A process killed while writing the folder: the old index still opens and answers."""
    import subprocess
    import sys

    before = Index.open(index_dir).similar("P2-0", 3)
    script = f"""
import os, signal
import lookalike.store.folder as store
from lookalike import build_index, read_catalog
store.faiss.write_index = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
cat = read_catalog({str(tiny_catalog)!r}, id_column="sku", image_column="file")
build_index(cat, {str(index_dir)!r}, model="efficientnet-lite0")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                          check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    ix = Index.open(index_dir)
    assert ix.model == MODEL and ix.similar("P2-0", 3) == before


def test_options_for_a_mode_that_is_off_are_refused(tiny_catalog: Path, tmp_path: Path) -> None:
    """build used to ignore --actors, --workers, --calibration-*, --strict and --milvus-uri
    when their engine, precision or backend was not the one chosen."""
    out = tmp_path / "ix"
    for flags, said in ((["--actors", "2"], "--actors only applies with --engine ray"),
                        (["--engine", "ray", "--workers", "2"],
                         "--workers only applies with --engine local"),
                        (["--calibration-size", "8", "--strict"],
                         "--calibration-size, --strict only apply with --precision int8"),
                        (["--milvus-uri", "x.db"], "--milvus-uri only applies with --backend"),
                        (["--backend", "milvus", "--milvus-uri", "x.db", "--vectors", "float16"],
                         "--vectors only applies with --backend faiss"),
                        (["--backend", "milvus"], "--backend milvus needs --milvus-uri")):
        r = build_tiny(tiny_catalog, out, *flags)
        assert r.exit_code == 2 and said in r.output, (flags, r.output)
        assert not out.exists()
    with pytest.raises(LookalikeError, match="engine must be one of LocalEngine, RayEngine"):
        build_index(read_catalog(tiny_catalog, id_column="sku", image_column="file"), out,
                    engine="ray")


def test_no_progress_bar_into_a_log_and_output_names_checked_first(tiny_catalog: Path,
                                                                    tmp_path: Path) -> None:
    """A build whose stderr is not a terminal writes no bar (a redirected log used to fill
    with carriage-return updates); a neighbours file of an unsupported type is refused before
    the index is even opened."""
    r = CliRunner().invoke(cli, ["build", str(tiny_catalog), "-o", str(tmp_path / "ix"),
                                 "--model", "color-histogram", "--id-column", "sku",
                                 "--image-column", "file"])
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output and "img/s" not in r.output
    r = CliRunner().invoke(cli, ["neighbors", str(tmp_path / "no-such-index"), "-o",
                                 str(tmp_path / "n.xlsx")])
    assert r.exit_code == 1 and "unsupported file type '.xlsx'" in r.output, r.output
