"""The Ray engine: ``lookalike build --engine ray`` on a local Ray instance started here gives
the local engine's result (same vectors, same skipped rows), photos read through a URI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lookalike import Index
from lookalike.search.neighbors import neighbor_agreement
from lookalike.store.milvus import close_clients

from ..conftest import MYNTRA, build_tiny

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]  # a stuck Ray worker fails the test


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    close_clients()  # no gRPC threads of a Milvus client while Ray forks its processes
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception:  # noqa: BLE001 (a slow machine: Ray's start-up can time out once)
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_build_equals_local_build(tiny_catalog: Path, tmp_path: Path) -> None:
    local = build_tiny(tiny_catalog, tmp_path / "local")
    assert local.exit_code == 0, local.output
    uri = (tiny_catalog.parent).resolve().as_uri()  # file:///…: read through pyarrow's filesystem
    res = build_tiny(tiny_catalog, tmp_path / "ray", "--engine", "ray", "--images", uri,
                     "--actors", "2", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "on Ray, 2 workers per stage" in res.output
    a, b = Index.open(tmp_path / "local"), Index.open(tmp_path / "ray")
    assert a.items["item_id"].tolist() == b.items["item_id"].tolist()
    np.testing.assert_allclose(np.asarray(b.embeddings), np.asarray(a.embeddings), atol=1e-6)
    assert a.items["photo_sha1"].tolist() == b.items["photo_sha1"].tolist()
    skipped_a = {s["item_id"] for s in a.manifest["skipped"]}
    skipped_b = {s["item_id"]: s["reason"] for s in b.manifest["skipped"]}
    assert skipped_a == set(skipped_b) and len(skipped_a) == 6
    assert "image file missing: file://" in skipped_b["bad-5"]
    assert b.manifest["engine"] == {"name": "ray", "address": "local"}
    assert b.manifest["catalog"]["images_root"] == uri
    ix = Index.open(tmp_path / "ray")  # photos of a URI root still open for search
    assert ix.search(ix.image_path("P1-0"), k=1)[0].item_id == "P1-0"


def test_unreachable_cluster_is_a_clear_error(tiny_catalog: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # as if no Ray were running in this process, so that the build has to connect itself
    # (shutting the test's Ray down and starting it again is flaky on a busy machine)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    res = build_tiny(tiny_catalog, tmp_path / "ray", "--engine", "ray", "--address",
                     "127.0.0.1:1")
    assert res.exit_code != 0
    assert "could not start or reach a Ray cluster at 127.0.0.1:1" in res.output
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_ray_agrees_with_local_exact_on_myntra_slice(myntra_slice: dict[str, Path],
                                                     tmp_path: Path) -> None:
    from lookalike.build import RayEngine, build_index
    from lookalike.ingest.catalog import read_catalog

    cat = read_catalog(myntra_slice["csv"], MYNTRA.resolve().as_uri())
    build_index(cat, tmp_path / "ray", engine=RayEngine())
    ray_ix, local_ix = Index.open(tmp_path / "ray"), Index.open(myntra_slice["exact"])
    assert len(ray_ix) == len(local_ix) == 2000
    np.testing.assert_allclose(np.asarray(ray_ix.embeddings), np.asarray(local_ix.embeddings),
                               atol=1e-5)
    agreement = neighbor_agreement(ray_ix, local_ix)
    print(f"\nRay vs local exact, 2,000 myntra items: top-10 agreement {agreement:.4f}")
    assert agreement >= 0.99
