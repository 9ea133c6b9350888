"""Metrics against answers worked out by hand on tiny examples."""

import numpy as np
import pandas as pd
import pytest

from lookalike import LookalikeError
from lookalike.ingest.catalog import label_codes
from lookalike.quality.metrics import (
    evaluate_catalog,
    evaluate_queries,
    group_table,
    triplet_accuracy,
)
from lookalike.search.exact import rank

# five unit vectors with exact ties: rows 0 and 1 are identical, so are rows 2 and 3
X = np.array([[1, 0], [1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], np.float32)
ITEMS = pd.DataFrame({"type": ["A", "B", "A", "A", "B"], "colour": ["r", "r", "r", "g", "g"]})
PRODUCTS = np.array(["p1", "p1", "p2", "p3", "p2"])


def test_rank_excludes_self_and_breaks_ties_by_row() -> None:
    rows, scores = rank(X, X, 4, self_rows=np.arange(5))
    # row 0: row 1 (1.0), then rows 2 and 3 tie at 0.6 (earlier row first), then row 4
    assert rows.tolist() == [[1, 2, 3, 4], [0, 2, 3, 4], [3, 4, 0, 1], [2, 4, 0, 1],
                             [2, 3, 0, 1]]
    np.testing.assert_allclose(scores[0], [1.0, 0.6, 0.6, 0.0], atol=1e-6)
    # a cut inside a tie keeps the earlier row, whatever the partition did
    assert rank(X, X, 2, self_rows=np.arange(5))[0][0].tolist() == [1, 2]
    assert rank(X[4:], X, 1, self_rows=np.array([4]))[0].tolist() == [[2]]


def test_rank_pads_when_k_exceeds_the_gallery() -> None:
    rows, scores = rank(X[:1], X, 6, self_rows=np.array([0]))
    assert rows.tolist() == [[1, 2, 3, 4, -1, -1]]
    assert np.isneginf(scores[0, 4:]).all()


def test_attribute_metrics_by_hand() -> None:
    ev = evaluate_catalog(X, ITEMS, [["type"]], ks=[1, 2, 4, 5])
    pq = ev.per_query
    # query 0 (A): ranked 1 2 3 4 → hits 0 1 1 0, R = 2
    # query 3 (A): ranked 2 4 0 1 → hits 1 0 1 0, R = 2
    # query 4 (B): ranked 2 3 0 1 → hits 0 0 0 1, R = 1
    assert pq.loc[0, "precision@1/type"] == 0 and pq.loc[0, "precision@2/type"] == 0.5
    assert pq.loc[0, "recall@2/type"] == 0.5 and pq.loc[0, "recall@4/type"] == 1.0
    assert pq.loc[0, "mAP@2/type"] == pytest.approx(0.5 / 2)
    assert pq.loc[0, "mAP@4/type"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pq.loc[3, "mAP@4/type"] == pytest.approx((1 + 2 / 3) / 2)
    assert pq.loc[4, "precision@4/type"] == 0.25 and pq.loc[4, "recall@4/type"] == 1.0
    assert pq.loc[4, "mAP@4/type"] == pytest.approx(0.25)  # k=4 > R=1: divide by R
    assert pq.loc[4, "mAP@2/type"] == 0
    # k=5 is larger than the gallery (4 others): the empty slot counts as a miss
    assert pq.loc[0, "precision@5/type"] == pytest.approx(2 / 5)
    # query 1 (B): ranked 0 2 3 4 → hits at rank 4 only; query 2 (A): ranked 3 4 0 1 → 1 0 1 0
    m = ev.metrics
    assert m["precision@1/type"] == pytest.approx((0 + 0 + 1 + 1 + 0) / 5)
    assert m["queries/type"] == 5


def test_combined_attributes_and_queries_without_relevant_items() -> None:
    ev = evaluate_catalog(X, ITEMS, [["type", "colour"]], ks=[1, 4])
    # labels A|r, B|r, A|r, A|g, B|g: only A|r has a second item; the other queries have no
    # relevant item and do not count
    counted = ev.per_query["precision@1/type+colour"].notna().tolist()
    assert counted == [True, False, True, False, False]
    assert ev.metrics["queries/type+colour"] == 2
    # query 0 (A|r): ranked 1 2 3 4 → hit at rank 2 only; query 2: ranked 3 4 0 1 → rank 3
    assert ev.per_query.loc[0, "mAP@4/type+colour"] == pytest.approx(0.5)
    assert ev.per_query.loc[2, "mAP@4/type+colour"] == pytest.approx(1 / 3)
    assert ev.metrics["mAP@4/type+colour"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_missing_values_never_match() -> None:
    items = ITEMS.assign(type=["A", None, "A", "", "B"])
    codes = label_codes(items, ["type"])
    assert codes[1] == -1 and codes[3] == -1 and codes[0] == codes[2]
    ev = evaluate_catalog(X, items, [["type"]], ks=[4])
    assert ev.per_query["precision@4/type"].isna().tolist() == [False, True, False, True, True]
    assert ev.per_query.loc[0, "precision@4/type"] == 0.25  # only row 2, at rank 2


def test_product_identity_by_hand() -> None:
    ev = evaluate_catalog(X, ITEMS, [], ks=[1, 2], products=PRODUCTS)
    # query 2 (p2 = rows 2, 4): ranked 3 4 … → found at rank 2; query 3 is alone in p3
    pq = ev.per_query
    assert pq["recall@1/product"].tolist()[:3] == [1, 1, 0]
    assert np.isnan(pq.loc[3, "recall@1/product"])
    m = ev.metrics
    assert m["recall@1/product"] == pytest.approx(3 / 4)
    assert m["recall@2/product"] == 1.0
    assert m["mAP@R/product"] == pytest.approx(3 / 4)
    assert m["queries/product"] == 4


def test_map_at_r_uses_r_as_cutoff() -> None:
    # one query, three relevant items found at ranks 1, 3 and 4 (R = 3): only ranks ≤ 3 count
    x = np.array([[1, 0], [1, 0], [0.9, 0.436], [0.8, 0.6], [0.7, 0.714]], np.float32)
    products = np.array(["a", "a", "b", "a", "a"])
    ev = evaluate_catalog(x, ITEMS, [], ks=[1], products=products, query_rows=np.array([0]))
    assert ev.rows.tolist() == [[1]]
    assert ev.per_query.loc[0, "mAP@R/product"] == pytest.approx((1 + 2 / 3) / 3)


def test_exclude_product_drops_the_query_s_other_photos() -> None:
    ev = evaluate_catalog(X, ITEMS, [["type"]], ks=[1, 3], products=PRODUCTS,
                          exclude_product=True, query_rows=np.array([0]))
    # query 0 without row 1 (same product): ranked 2 3 4 → A A B; R = 2 (rows 2 and 3)
    assert ev.hits["type"].tolist() == [[True, True, False]]
    assert ev.ranking("type")[0].tolist() == [[2, 3, 4]]
    assert ev.ranking("product")[0].tolist() == [[1, 2, 3]]  # the plain ranking
    np.testing.assert_allclose(ev.ranking("type")[1], [[0.6, 0.6, 0.0]], atol=1e-6)
    assert ev.per_query.loc[0, "precision@1/type"] == 1
    assert ev.per_query.loc[0, "recall@3/type"] == 1
    assert ev.metrics["recall@1/product"] == 1  # product identity still sees row 1


def test_sampled_queries_keep_the_whole_gallery() -> None:
    ev = evaluate_catalog(X, ITEMS, [["type"]], ks=[1], query_rows=np.array([3]))
    assert list(ev.per_query.index) == [3] and ev.rows.tolist() == [[2]]


def test_query_set_against_the_catalogue() -> None:
    relevant = {"x": ITEMS["type"].eq("A").to_numpy()}
    q = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    ev = evaluate_queries(q, ["x", "x", "unmapped"], X, relevant, ks=[1, 2, 5])
    # query 0: ranked 0 1 2 3 4 → A B A A B; query 1: ranked 4 2 3 0 1 → B A A A B
    pq = ev.per_query
    assert pq["accuracy@1/query"].tolist()[:2] == [1, 0] and np.isnan(pq.loc[2, "accuracy@1/query"])
    assert pq.loc[0, "precision@2/query"] == 0.5
    assert pq.loc[0, "mAP@5/query"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert pq.loc[1, "mAP@5/query"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert ev.metrics["queries/query"] == 2


def test_triplet_accuracy_counts_ties_as_misses() -> None:
    ok = triplet_accuracy(X, np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([4, 3, 0]))
    # 0: 1.0 vs 0 → right; 0: 0.6 vs 0.6 tie → miss; 2: 1.0 vs 0.6 → right
    assert ok.tolist() == [True, False, True]


def test_group_table() -> None:
    ev = evaluate_catalog(X, ITEMS, [["type"]], ks=[1])
    t = group_table(ev.per_query, ITEMS["type"].to_numpy(), ["precision@1/type"])
    assert t.loc["A", "queries"] == 3 and t.loc["A", "precision@1/type"] == pytest.approx(2 / 3)
    assert t.loc["B", "precision@1/type"] == 0


def test_bad_arguments() -> None:
    with pytest.raises(LookalikeError, match="column 'size' \\(an attribute\\) not found"):
        evaluate_catalog(X, ITEMS, [["size"]])
    with pytest.raises(LookalikeError, match="positive"):
        evaluate_catalog(X, ITEMS, [["type"]], ks=[0])
    with pytest.raises(LookalikeError, match="nothing to measure"):
        evaluate_catalog(X, ITEMS, [], products=np.arange(5))
    with pytest.raises(LookalikeError, match="at least 2 items"):
        evaluate_catalog(X[:1], ITEMS[:1], [["type"]])


def test_rank_matches_a_full_stable_sort_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(300, 4)), 0).astype(np.float32)  # coarse: lots of equal scores
    rows, scores = rank(x, x, 25, self_rows=np.arange(300))
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :25]
    assert (rows == ref).all()
    np.testing.assert_array_equal(scores, np.take_along_axis(s, ref, axis=1))
