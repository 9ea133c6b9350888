"""The triplet sampler: proportions, definitions, seeds, skipped rows, errors."""

import numpy as np
import pandas as pd
import pytest

from lookalike import LookalikeError
from lookalike.quality.splits import assign_splits
from lookalike.training.triplets import COLUMNS, sample_triplets, single_photo, write_triplets


def catalogue(photos_per_product: int = 3) -> pd.DataFrame:
    """8 categories × 4 colours × 5 products, each with a few photos."""
    rows = []
    for c in range(8):
        for k in range(4):
            for p in range(5):
                for v in range(photos_per_product):
                    rows.append((f"c{c}-k{k}-p{p}-{v}", f"c{c}-k{k}-p{p}", f"cat{c}", f"col{k}"))
    return pd.DataFrame(rows, columns=["item_id", "product_id", "type", "colour"])


def check_definitions(items: pd.DataFrame, ts) -> None:
    cat, col, prod = (items[c].to_numpy() for c in ("type", "colour", "product_id"))
    q, p, n, pt, nt = ts.query, ts.positive, ts.negative, ts.positive_type, ts.negative_type
    same = pt == 0
    assert (prod[q][same] == prod[p][same]).all() and (q[same] != p[same]).all()
    aug = pt == 1
    assert (p[aug] == q[aug]).all()
    scc = pt == 2
    assert (cat[q][scc] == cat[p][scc]).all() and (col[q][scc] == col[p][scc]).all()
    assert (q[scc] != p[scc]).all()
    inc = nt == 0
    assert (cat[q][inc] == cat[n][inc]).all() and (col[q][inc] != col[n][inc]).all()
    assert (cat[q][~inc] != cat[n][~inc]).all()


@pytest.mark.parametrize("p_same, p_in", [(0.9, 0.3), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0)])
def test_proportions_and_definitions(p_same: float, p_in: float) -> None:
    items = catalogue()
    ts = sample_triplets(items, 20_000, category="type", color="colour", p_same_product=p_same,
                         p_in_class=p_in, seed=1)
    assert len(ts) == 20_000 and sum(ts.skipped.values()) == 0
    check_definitions(items, ts)
    assert abs((ts.positive_type == 0).mean() - p_same) < 0.015
    assert abs((ts.negative_type == 0).mean() - p_in) < 0.015
    # queries come up in proportion to their category's size (here: equal sizes)
    shares = np.bincount(pd.factorize(items["type"])[0][ts.query]) / len(ts)
    assert np.abs(shares - 1 / 8).max() < 0.015


def test_single_photo_products_get_augmented_positives() -> None:
    items = catalogue(photos_per_product=1)
    ts = sample_triplets(items, 5_000, category="type", color="colour", p_same_product=0.9,
                         seed=0)
    check_definitions(items, ts)
    assert (ts.positive_type == 0).sum() == 0
    assert abs((ts.positive_type == 1).mean() - 0.9) < 0.02
    table = ts.table(items["item_id"].to_numpy())
    assert list(table.columns) == list(COLUMNS)
    aug = table[table.positive_type == "same_product_augmented"]
    assert (aug.query_id == aug.positive_id).all()


def test_seeded_and_reproducible() -> None:
    items = catalogue()
    a = sample_triplets(items, 1_000, category="type", color="colour", seed=7)
    b = sample_triplets(items, 1_000, category="type", color="colour", seed=7)
    c = sample_triplets(items, 1_000, category="type", color="colour", seed=8)
    assert (a.query == b.query).all() and (a.negative == b.negative).all()
    assert (a.positive == b.positive).all() and not (a.query == c.query).all()


def test_rows_that_cannot_be_formed_are_skipped_and_counted() -> None:
    items = pd.DataFrame({
        "item_id": list("abcdefg"), "product_id": list("abcdefg"),
        "type": ["shirt", "shirt", "shirt", "shoe", "shoe", "bag", "bag"],
        "colour": ["red", "red", "blue", "black", "black", "brown", None],
    })
    ts = sample_triplets(items, 2_000, category="type", color="colour", p_same_product=0.0,
                         p_in_class=1.0, seed=0)
    check_definitions(items, ts)
    s = ts.skipped
    assert s["items without category or colour (left out)"] == 1  # the bag without colour
    # blue shirt and brown bag have no partner of their type and colour; the black shoes have
    # no other colour of shoe: none of these can form an in-class triplet
    assert s["no other item of the same category and colour"] > 0
    assert s["in-class negative impossible (category with one colour)"] > 0
    assert len(ts) + sum(s.values()) - 1 == 2_000
    assert set(items.item_id.to_numpy()[ts.query]) == {"a", "b"}


def test_rows_restrict_the_pool() -> None:
    items = catalogue()
    train = np.flatnonzero(assign_splits(items["product_id"], test=0.3, val=0.0) == "train")
    ts = sample_triplets(items, 3_000, category="type", color="colour", rows=train, seed=0)
    used = np.concatenate([ts.query, ts.positive, ts.negative])
    assert np.isin(used, train).all()


def test_errors_name_the_problem(tmp_path) -> None:
    items = catalogue()
    with pytest.raises(LookalikeError, match=r"column 'color' \(color=\) not found"):
        sample_triplets(items, 10, category="type", color="color")
    with pytest.raises(LookalikeError, match=r"column 'sku' \(product=\) not found"):
        sample_triplets(items, 10, category="type", color="colour", product="sku")
    with pytest.raises(LookalikeError, match="p_in_class must be between 0 and 1"):
        sample_triplets(items, 10, category="type", color="colour", p_in_class=1.5)
    with pytest.raises(LookalikeError, match="at least 1"):
        sample_triplets(items, 0, category="type", color="colour")
    ts = sample_triplets(items, 10, category="type", color="colour")
    with pytest.raises(LookalikeError, match="use a .parquet file name"):
        write_triplets(ts, items["item_id"].to_numpy(), tmp_path / "t.csv")
    out = write_triplets(ts, items["item_id"].to_numpy(), tmp_path / "t.parquet")
    back = pd.read_parquet(out)
    assert list(back.columns) == list(COLUMNS) and len(back) == 10


def test_splits_are_by_product_and_stable() -> None:
    items = catalogue()
    s = assign_splits(items["product_id"], test=0.2, val=0.1, seed=3)
    per_product = pd.Series(s).groupby(items["product_id"]).nunique()
    assert (per_product == 1).all()  # every photo of a product in one split
    shuffled = items.sample(frac=1, random_state=0)
    s2 = assign_splits(shuffled["product_id"], test=0.2, val=0.1, seed=3)
    assert (pd.Series(s2, index=shuffled.index).sort_index().to_numpy() == s).all()
    share = pd.Series(s).groupby(items["product_id"]).first().value_counts(normalize=True)
    assert abs(share["test"] - 0.2) < 0.1 and abs(share["val"] - 0.1) < 0.08
    assert not (assign_splits(items["product_id"], seed=4) == s).all()
    with pytest.raises(LookalikeError, match="split fractions"):
        assign_splits(items["product_id"], test=0.7, val=0.4)


def test_single_photo_agrees_with_the_sampler() -> None:
    items = catalogue(photos_per_product=2)
    items.loc[0, "colour"] = None  # product c0-k0-p0 keeps one usable photo
    rows = np.arange(len(items))
    alone = single_photo(items, rows, "product_id", "type", "colour")
    assert alone.tolist() == [False, True] + [False] * (len(items) - 2)
    ts = sample_triplets(items, 20_000, category="type", color="colour", p_same_product=1.0,
                         seed=0)
    augmented = set(ts.query[ts.positive_type == 1].tolist())
    assert augmented == {1}
