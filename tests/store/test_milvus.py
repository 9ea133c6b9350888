"""The Milvus backend on milvus-lite (a local file: the real Milvus engine, in-process):
vectors and attributes in a collection that serves search, filters, adds and deletes, with the
same commands and API as the faiss folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lookalike import Index
from lookalike.cli import cli
from lookalike.search.neighbors import neighbor_agreement
from lookalike.server.live import LiveIndex
from lookalike.store.folder import read_manifest
from lookalike.store.milvus import client, close_clients

from ..conftest import MYNTRA, build_tiny, garment

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytestmark = [pytest.mark.milvus, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def _close_milvus() -> None:
    """No Milvus connection outlives these tests: their gRPC threads would be running when
    later tests fork (Ray's start-up is where that hurt)."""
    yield
    close_clients()


def _ids(hits: list) -> list[str]:
    return [h.item_id for h in hits]


@pytest.fixture
def pair(tiny_catalog: Path, tmp_path: Path) -> dict[str, Path]:
    """The tiny catalogue built twice: faiss files (exact) and a Milvus collection (HNSW)."""
    local = build_tiny(tiny_catalog, tmp_path / "local", "--product-column", "product")
    assert local.exit_code == 0, local.output
    db = tmp_path / "milvus.db"  # one milvus-lite file per test
    res = build_tiny(tiny_catalog, tmp_path / "milvus", "--product-column", "product",
                     "--backend", "milvus", "--milvus-uri", str(db), "--index", "hnsw")
    assert res.exit_code == 0, res.output
    assert "in Milvus collection lookalike_milvus_" in res.output and "(HNSW)" in res.output
    return {"local": tmp_path / "local", "milvus": tmp_path / "milvus", "db": db,
            "catalog": tiny_catalog}


def test_milvus_index_answers_like_the_local_one(pair: dict[str, Path]) -> None:
    m = read_manifest(pair["milvus"])
    assert m["backend"]["type"] == "milvus" and m["backend"]["uri"] == str(pair["db"])
    assert m["index"]["recall@10"] >= 0.98
    assert not (pair["milvus"] / "embeddings.npy").exists()  # the vectors are in Milvus only
    a, b = Index.open(pair["local"]), Index.open(pair["milvus"])
    assert b.backend is not None and len(a) == len(b) == 24
    assert client(str(pair["db"])).get_collection_stats(m["backend"]["collection"])[
        "row_count"] == 24
    np.testing.assert_allclose(np.asarray(b.embeddings), np.asarray(a.embeddings), atol=1e-6)
    np.testing.assert_allclose(b.vector("P2-1"), a.vector("P2-1"), atol=1e-6)
    for item in a.items["item_id"]:
        assert _ids(b.similar(item, 5)) == _ids(a.similar(item, 5))
        for where in ({"gender": "Men"}, {"colour": ["Red", "Blue"], "gender": "Women"}):
            assert _ids(b.similar(item, 5, where=where)) == _ids(a.similar(item, 5, where=where))
        assert _ids(b.similar(item, 3, per_product=True)) == \
            _ids(a.similar(item, 3, per_product=True))
    photo = a.image_path("P3-0")
    assert _ids(b.search(photo, 4)) == _ids(a.search(photo, 4))
    assert neighbor_agreement(a, b, k=5) == 1.0  # all items' neighbours through Milvus
    with pytest.raises(Exception, match="cannot filter on 'size'"):
        b.similar("P1-0", where={"size": "M"})


def test_add_remove_and_live_changes_go_through_milvus(pair: dict[str, Path],
                                                       tmp_path: Path) -> None:
    runner = CliRunner()
    photos = pair["catalog"].parent / "photos"
    garment((20, 200, 200), "shirt", seed=5).save(photos / "new.png")
    delta = tmp_path / "delta.csv"
    pd.DataFrame([("N1", "PN", "Shirts", "Cyan", "Men", "photos/new.png")],
                 columns=["sku", "product", "type", "colour", "gender", "file"]).to_csv(
        delta, index=False)
    r = runner.invoke(cli, ["add", str(pair["milvus"]), str(delta), "--images",
                            str(pair["catalog"].parent), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["remove", str(pair["milvus"]), "P1-0", "P1-1"])
    assert r.exit_code == 0, r.output
    ix = Index.open(pair["milvus"])
    coll = ix.backend.collection
    assert "N1" in ix and "P1-0" not in ix and len(ix) == 23
    assert client(str(pair["db"])).get_collection_stats(coll)["row_count"] == 23
    assert ix.search(photos / "new.png", 1)[0].item_id == "N1"
    assert ix.similar("N1", 3, where={"colour": "Cyan"}) == []
    assert not {"P1-0", "P1-1"} & set(_ids(ix.similar("P1-2", 23)))
    assert "change 2: delete 2 removed" in runner.invoke(cli, ["info", str(pair["milvus"])]).output

    live = LiveIndex(pair["milvus"])  # the server's path: one item at a time
    live.add("L1", (photos / "P2-0.jpg").read_bytes(), {"colour": "Blue"}, "PL",
             max_pixels=10**8)
    after = live.index
    assert after.similar("P2-0", 1)[0].item_id == "L1"
    live.delete("P2-0")
    assert "P2-0" not in _ids(after.similar("L1", 23))
    assert client(str(pair["db"])).get_collection_stats(coll)["row_count"] == 23
    assert _ids(Index.open(pair["milvus"]).similar("L1", 3)) == _ids(after.similar("L1", 3))
    r = runner.invoke(cli, ["compact", str(pair["milvus"])])  # items table only: same collection
    assert r.exit_code == 0 and "4 change(s) folded in" in r.output, r.output
    compacted = Index.open(pair["milvus"])
    assert compacted.backend.collection == coll and client(str(pair["db"])).has_collection(coll)
    assert _ids(compacted.similar("L1", 5)) == _ids(after.similar("L1", 5))
    assert not (pair["milvus"] / "journal").exists()
    live.close()


def test_rebuild_replaces_the_collection_and_bad_options_are_refused(
        pair: dict[str, Path]) -> None:
    old = read_manifest(pair["milvus"])["backend"]["collection"]
    res = build_tiny(pair["catalog"], pair["milvus"], "--backend", "milvus", "--milvus-uri",
                     str(pair["db"]), "--index", "exact")
    assert res.exit_code == 0, res.output
    new = read_manifest(pair["milvus"])["backend"]
    assert new["collection"] != old and new["index_type"] == "FLAT"
    assert not client(str(pair["db"])).has_collection(old)
    res = build_tiny(pair["catalog"], pair["milvus"], "--backend", "milvus", "--milvus-uri",
                     str(pair["db"]), "--index", "ivfpq")
    assert res.exit_code != 0 and "milvus-lite cannot build IVF_PQ" in res.output
    assert read_manifest(pair["milvus"])["backend"]["collection"] == new["collection"]
    res = build_tiny(pair["catalog"], pair["milvus"], "--backend", "milvus", "--milvus-uri",
                     str(pair["db"]), "--index", "ivf", "--product-column", "product")
    assert res.exit_code == 0, res.output
    new = read_manifest(pair["milvus"])["backend"]
    assert new["index_type"] == "IVF_FLAT" and read_manifest(pair["milvus"])["index"][
        "recall@10"] >= 0.98
    a, b = Index.open(pair["local"]), Index.open(pair["milvus"])
    for item in ("P1-0", "P4-2", "odd-3"):
        assert _ids(b.similar(item, 5)) == _ids(a.similar(item, 5))
    res = build_tiny(pair["catalog"], pair["milvus"], "--backend", "milvus")
    assert res.exit_code != 0 and "--backend milvus needs --milvus-uri" in res.output
    client(str(pair["db"])).drop_collection(new["collection"])
    with pytest.raises(Exception, match="collection .* is gone"):
        Index.open(pair["milvus"])


@pytest.mark.slow
def test_milvus_agrees_with_local_exact_on_myntra_slice(myntra_slice: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from lookalike.build import MilvusStore, build_index
    from lookalike.ingest.catalog import read_catalog

    build_index(read_catalog(myntra_slice["csv"], MYNTRA), tmp_path / "milvus", index="hnsw",
                store=MilvusStore(str(tmp_path / "milvus.db")))
    m, local = Index.open(tmp_path / "milvus"), Index.open(myntra_slice["exact"])
    agreement = neighbor_agreement(m, local)
    ids = local.items["item_id"].astype(str).to_numpy()
    filtered = []
    for i in np.random.default_rng(1).choice(ids, 100, replace=False):
        meta = local.metadata(i)
        where = {"gender": meta["gender"], "articleType": meta["articleType"]}
        x = set(_ids(local.similar(i, 10, where=where)))
        if x:
            filtered.append(len(x & set(_ids(m.similar(i, 10, where=where)))) / len(x))
    print(f"\nMilvus HNSW vs local exact, 2,000 myntra items: top-10 agreement {agreement:.4f}"
          f" (filtered by gender and articleType: {np.mean(filtered):.4f}); "
          f"recall@10 at build {m.manifest['index']['recall@10']}")
    assert agreement >= 0.99 and np.mean(filtered) >= 0.99


def test_a_collection_is_searched_only_once_its_index_covers_every_row(
        tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: a new collection was loaded (searchable) before its index was built, so the
    build could tune the search breadth on Milvus's brute-force scan of unindexed rows (recall
    1.0 at nprobe 1) and, once the IVF index was in place, the same searches found nothing
    (seen under load as an empty similar list)."""
    db = tmp_path / "m.db"
    c = client(str(db))
    seen: list[dict | None] = []
    load = c.load_collection

    def checked_load(name: str, *args: object, **kwargs: object) -> object:
        seen.append(c.describe_index(name, "vector") if c.list_indexes(name) else None)
        return load(name, *args, **kwargs)

    monkeypatch.setattr(c, "load_collection", checked_load)
    res = build_tiny(tiny_catalog, tmp_path / "mv", "--backend", "milvus", "--milvus-uri",
                     str(db), "--index", "ivf")
    assert res.exit_code == 0, res.output
    assert seen and all(d is not None and d["total_rows"] == d["indexed_rows"] == 24
                        and d["pending_index_rows"] == 0 for d in seen), seen
