"""Real photos from ../shared/datasets (marked slow; CI runs them too)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lookalike import Index, build_index, read_catalog
from lookalike.cli import cli
from lookalike.search.neighbors import neighbor_rows

from .conftest import MYNTRA, STREET

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (MYNTRA / "catalog.csv").exists(),
                                 reason=f"sample data not found at {MYNTRA}")]


@pytest.fixture(scope="module")
def myntra_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 rows of myntra-9k, images read in place (never copied)."""
    df = pd.read_csv(MYNTRA / "catalog.csv", dtype={"id": str}).head(600)
    path = tmp_path_factory.mktemp("myntra") / "slice.csv"
    df.to_csv(path, index=False)
    out = path.parent / "index"
    build_index(read_catalog(path, MYNTRA), out)  # default model: efficientnet-lite0
    return out


def test_slice_builds_and_neighbours_share_article_type(myntra_slice: Path) -> None:
    ix = Index.open(myntra_slice, model="efficientnet-lite0")
    assert len(ix) == 600 and ix.manifest["counts"]["skipped"] == 0
    nb = neighbor_rows(ix.vector_index, np.asarray(ix.embeddings), 5)
    types = ix.items["articleType"].to_numpy()
    precision = float((types[nb] == types[:, None]).mean())
    chance = float((ix.items["articleType"].value_counts(normalize=True) ** 2).sum())
    assert precision > 0.6 > 5 * chance, (precision, chance)


def test_similar_and_filters_on_real_items(myntra_slice: Path) -> None:
    ix = Index.open(myntra_slice)
    shirt = ix.items.loc[ix.items.articleType == "Shirts", "item_id"].iloc[0]
    hits = ix.similar(shirt, 10, where={"gender": "Men"})
    assert len(hits) == 10 and all(h.metadata["gender"] == "Men" for h in hits)
    assert sum(h.metadata["articleType"] == "Shirts" for h in hits) >= 6


@pytest.mark.skipif(not (STREET / "photos.csv").exists(), reason="street-photos not found")
def test_street_photo_of_shoes_finds_footwear(myntra_slice: Path) -> None:
    photos = pd.read_csv(STREET / "photos.csv")
    ix = Index.open(myntra_slice)
    shoe_photos = photos[photos.label == "Shoes"].image_path.head(5)
    footwear = 0
    for p in shoe_photos:
        hits = ix.search(STREET / p, k=10)
        assert len(hits) == 10
        footwear += sum(h.metadata["masterCategory"] == "Footwear" for h in hits)
    assert footwear / (10 * len(shoe_photos)) > 0.5


@pytest.mark.skipif(not (STREET / "photos.csv").exists(), reason="street-photos not found")
def test_evaluate_slice_with_street_photos(myntra_slice: Path) -> None:
    mapping = Path(__file__).resolve().parents[1] / "docs" / "street-photos-mapping.yaml"
    r = CliRunner().invoke(cli, [
        "evaluate", str(myntra_slice), "-r", "articleType", "-r", "articleType+baseColour",
        "-k", "1,10,20", "--queries", str(STREET / "photos.csv"), "--mapping", str(mapping),
        "--json", "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["queries/articleType"] > 580 and m["precision@10/articleType"] > 0.6
    assert m["precision@10/articleType"] > m["precision@10/articleType+baseColour"]
    # every street photo is read; all but the unmapped "Body" ones find relevant items here
    assert 600 < m["queries/query:articleType"] <= 670
    # far above chance: a random catalogue item matches a mapped label about 1 time in 5
    assert m["accuracy@1/query:articleType"] > 0.4
