import numpy as np
import pandas as pd
import pytest

from lookalike import LookalikeError
from lookalike.search.topk import filter_mask, parse_where, top_k
from lookalike.search.vector_index import flat_index


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_matches_numpy_argsort() -> None:
    x = _unit(500, 32)
    index = flat_index(x)
    for q in range(0, 500, 37):
        rows, scores = top_k(index, x[q], 10, exclude_rows=[q])
        sims = x @ x[q]
        sims[q] = -np.inf
        expect = np.argsort(-sims, kind="stable")[:10]
        assert rows.tolist() == expect.tolist()
        np.testing.assert_allclose(scores, sims[expect], rtol=1e-5)


def test_filters_restrict_candidates() -> None:
    x = _unit(300, 16, seed=1)
    items = pd.DataFrame({"gender": ["Men", "Women", "Boys"] * 100,
                          "type": ["Shirts"] * 150 + ["Shoes"] * 150, "year": [2011, 2012] * 150})
    mask = filter_mask(items, parse_where(["gender=Men", "gender=Boys", "type=Shoes",
                                           "year=2012"]), ["gender", "type", "year"])
    assert mask is not None
    expected = items.index[items.gender.isin(["Men", "Boys"]) & (items.type == "Shoes")
                           & (items.year == 2012)].to_numpy()
    assert mask.nonzero()[0].tolist() == expected.tolist()
    rows, _ = top_k(flat_index(x), x[0], 200, mask=mask)
    sims = x[expected] @ x[0]
    assert rows.tolist() == expected[np.argsort(-sims, kind="stable")].tolist()  # all of them
    with pytest.raises(LookalikeError, match="cannot filter on 'size'.*gender, type, year"):
        filter_mask(items, {"size": "M"}, ["gender", "type", "year"])
    with pytest.raises(LookalikeError, match="ATTRIBUTE=VALUE"):
        parse_where(["gender"])


def test_per_product_keeps_best_photo_and_drops_own_product() -> None:
    x = _unit(200, 8, seed=2)
    products = np.array([f"p{i // 4}" for i in range(200)], dtype=object)
    index = flat_index(x)
    q = 5
    rows, scores = top_k(index, x[q], 7, exclude_rows=[q], products=products,
                         exclude_products=[products[q]])
    sims = x @ x[q]
    order = np.argsort(-sims, kind="stable")
    expect, seen = [], {products[q]}
    for r in order:
        if products[r] not in seen:
            seen.add(products[r])
            expect.append(r)
    assert rows.tolist() == expect[:7]
    assert len({products[r] for r in rows}) == 7
    assert np.all(np.diff(scores) <= 1e-7)


def test_k_larger_than_candidates_and_bad_k() -> None:
    x = _unit(5, 4)
    rows, _ = top_k(flat_index(x), x[0], 10, exclude_rows=[0])
    assert sorted(rows.tolist()) == [1, 2, 3, 4]
    with pytest.raises(LookalikeError, match="k must be at least 1"):
        top_k(flat_index(x), x[0], 0)
    with pytest.raises(LookalikeError, match="3 dimensions, the index 4"):
        top_k(flat_index(x), x[0, :3], 2)
