"""Retrieval quality as named numbers: plain functions over arrays.

Every metric is computed per query, from a ranked list of gallery rows, and then averaged.
A ranking is exact (all gallery items scored) and deterministic: equal scores are ordered by
gallery row, the earlier row first. Metric keys are ``"<metric>@<k>/<relevance>"``.

Definitions, for one query with ``R`` relevant gallery items and ``rel_i`` = 1 when the item at
rank ``i`` is relevant:

- ``precision@k`` = (relevant items in the top k) / k
- ``recall@k`` (attributes) = (relevant items in the top k) / R
- ``recall@k`` (product) = 1 if any of the top k is another photo of the query's product, else
  0 (the In-shop / Stanford Online Products protocol)
- ``mAP@k`` = mean over queries of AP@k = Σ_{i≤k} precision@i · rel_i / min(k, R)
- ``mAP@R`` = mean over queries of Σ_{i≤R} precision@i · rel_i / R (Musgrave et al., 2020)
- ``accuracy@1`` (query sets) = 1 if the top hit is relevant

Queries with no relevant item in the gallery (R = 0) are left out of every average and counted
under ``queries/<relevance>`` (the number of queries that did count).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import label_codes
from lookalike.search.exact import drop_same_group, rank

DEFAULT_KS = (1, 5, 10, 20)
PRODUCT = "product"


# --------------------------------------------------------------------------- relevance

def relevant_counts(codes: np.ndarray, query_rows: np.ndarray,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """R per query: gallery items with the query's label, minus the query itself (and, with
    ``groups``, minus every item of the query's own group, which the ranking also drops)."""
    valid = codes >= 0
    per_label = np.bincount(codes[valid], minlength=codes.max() + 1 if valid.any() else 0)
    qc = codes[query_rows]
    r = np.where(qc >= 0, per_label[np.maximum(qc, 0)], 0)
    if groups is None:
        return np.where(qc >= 0, r - 1, 0)
    pair = pd.Series(np.ones(len(codes), int)).groupby([groups, codes]).transform("sum")
    return np.where(qc >= 0, r - pair.to_numpy()[query_rows], 0)


def hits_matrix(rows: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray) -> np.ndarray:
    """(Q, k) booleans: the ranked item has the query's label (missing labels never match)."""
    return ((rows >= 0) & (query_codes[:, None] >= 0)
            & (gallery_codes[np.maximum(rows, 0)] == query_codes[:, None]))


# --------------------------------------------------------------------------- metrics per query

def _check_k(hits: np.ndarray, k: int) -> None:
    if k < 1 or hits.shape[1] < k:
        raise LookalikeError(f"k={k} needs ranked lists of at least {k}, got {hits.shape[1]}")


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    return hits[:, :k].sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    return hits[:, :k].sum(axis=1) / np.maximum(n_relevant, 1)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    return hits[:, :k].any(axis=1).astype(float)


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    h = hits[:, :k].astype(float)
    precision_i = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return (precision_i * h).sum(axis=1) / np.maximum(np.minimum(n_relevant, k), 1)


def average_precision_at_r(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    r_max = int(n_relevant.max(initial=0))
    _check_k(hits, max(r_max, 1))
    width = max(r_max, 1)
    h = hits[:, :width].astype(float)
    precision_i = np.cumsum(h, axis=1) / np.arange(1, width + 1)
    within = np.arange(width)[None, :] < n_relevant[:, None]
    return (precision_i * h * within).sum(axis=1) / np.maximum(n_relevant, 1)


# --------------------------------------------------------------------------- evaluations

@dataclass
class Evaluation:
    """Per-query metric values (NaN where a query does not count), the ranked lists behind
    them and the hit matrices, so a report can show any query's neighbours."""

    query_rows: np.ndarray  # gallery row of each query (catalogue evaluation) or -1
    rows: np.ndarray  # (Q, k) ranked gallery rows
    scores: np.ndarray
    per_query: pd.DataFrame  # one row per query, one column per metric key
    hits: dict[str, np.ndarray] = field(default_factory=dict)  # relevance → (Q, k) booleans
    n_relevant: dict[str, np.ndarray] = field(default_factory=dict)
    #: attribute rankings when they differ from ``rows`` (the query's product left out)
    attribute_ranking: tuple[np.ndarray, np.ndarray] | None = None

    def on_rows(self, rows: np.ndarray) -> Evaluation:
        """The same evaluation with positions in a subset turned into the rows ``rows[i]``
        of the whole catalogue (an evaluation run on ``embeddings[rows]``)."""
        def lift(r: np.ndarray) -> np.ndarray:
            return np.where(r >= 0, rows[np.maximum(r, 0)], -1)

        per_query = self.per_query.copy()
        per_query.index = pd.Index(rows[self.query_rows], name="row")
        ranking = None if self.attribute_ranking is None else (
            lift(self.attribute_ranking[0]), self.attribute_ranking[1])
        return Evaluation(rows[self.query_rows], lift(self.rows), self.scores, per_query,
                          self.hits, self.n_relevant, ranking)

    def ranking(self, relevance: str) -> tuple[np.ndarray, np.ndarray]:
        """The ranked rows and scores that ``hits[relevance]`` was computed on."""
        if self.attribute_ranking is not None and relevance != PRODUCT:
            return self.attribute_ranking
        return self.rows, self.scores

    @property
    def metrics(self) -> dict[str, float]:
        return summarize(self.per_query)


def summarize(per_query: pd.DataFrame) -> dict[str, float]:
    """Average each metric column over the queries that count, plus ``queries/<relevance>``."""
    out: dict[str, float] = {}
    for col in per_query.columns:
        values = per_query[col].to_numpy(dtype=float)
        counted = ~np.isnan(values)
        out[col] = float(values[counted].mean()) if counted.any() else float("nan")
    for rel in dict.fromkeys(c.split("/", 1)[1] for c in per_query.columns if "/" in c):
        first = next(c for c in per_query.columns if c.endswith("/" + rel))
        out[f"queries/{rel}"] = int(per_query[first].notna().sum())
    return out


def relevance_name(attributes: Sequence[str]) -> str:
    return "+".join(attributes)


def _attribute_columns(name: str, hits: np.ndarray, n_rel: np.ndarray, ks: Sequence[int],
                       counted: np.ndarray) -> dict[str, np.ndarray]:
    cols = {}
    for k in ks:
        cols[f"precision@{k}/{name}"] = precision_at_k(hits, k)
        cols[f"recall@{k}/{name}"] = recall_at_k(hits, n_rel, k)
        cols[f"mAP@{k}/{name}"] = average_precision_at_k(hits, n_rel, k)
    return {key: np.where(counted, v, np.nan) for key, v in cols.items()}


def evaluate_catalog(embeddings: np.ndarray, items: pd.DataFrame,
                     relevances: Sequence[Sequence[str]], ks: Sequence[int] = DEFAULT_KS, *,
                     products: np.ndarray | None = None, query_rows: np.ndarray | None = None,
                     exclude_product: bool = False, ranker: Callable[..., Any] = rank
                     ) -> Evaluation:
    """Every item of ``query_rows`` (default: all) queries the whole catalogue, itself excluded.
    ``ranker`` ranks the gallery (:func:`rank`, or a re-ranking like it:
    :func:`lookalike.search.rerank.reranked`).

    ``relevances``: attribute lists, each one relevance ("same articleType", "same articleType
    and baseColour"). ``products``: one product id per item; where a product has several
    photos, ``recall@k/product`` and ``mAP@R/product`` measure finding its other photos. With
    ``exclude_product`` the attribute rankings also leave out the query's other product photos.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise LookalikeError(f"k values must be positive integers, got {ks}")
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n < 2:
        raise LookalikeError("evaluation needs at least 2 items")
    qrows = np.arange(n) if query_rows is None else np.asarray(query_rows, np.int64)
    group = None if products is None else pd.factorize(np.asarray(products, dtype=object))[0]
    product_sizes = np.bincount(group) if group is not None else np.ones(1, int)
    has_products = group is not None and product_sizes.max() > 1
    extra = int(product_sizes.max()) - 1 if has_products else 0
    if not relevances and not has_products:
        raise LookalikeError("nothing to measure: no relevance attributes were given (e.g. -r "
                             "articleType) and no product has several photos")
    # room for dropping the query's own product, and for mAP@R (R up to the largest product)
    width = max(max(ks) + (extra if exclude_product else 0), extra)
    rows, scores = ranker(x[qrows], x, width, self_rows=qrows)

    columns: dict[str, np.ndarray] = {}
    hits: dict[str, np.ndarray] = {}
    n_relevant: dict[str, np.ndarray] = {}
    attr_rows = rows
    attribute_ranking = None
    if exclude_product and has_products:
        attribute_ranking = drop_same_group(rows, scores, group[qrows], group, max(ks))
        attr_rows = attribute_ranking[0]
    for attrs in relevances:
        name = relevance_name(attrs)
        codes = label_codes(items, attrs)
        n_rel = relevant_counts(codes, qrows, group if exclude_product and has_products else None)
        h = hits_matrix(attr_rows[:, :max(ks)], codes[qrows], codes)
        hits[name], n_relevant[name] = h, n_rel
        columns.update(_attribute_columns(name, h, n_rel, ks, n_rel > 0))
    if has_products:
        n_rel = product_sizes[group[qrows]] - 1
        h = hits_matrix(rows, group[qrows], group)
        counted = n_rel > 0
        for k in ks:
            columns[f"recall@{k}/{PRODUCT}"] = np.where(counted, hit_rate_at_k(h, k), np.nan)
        columns[f"mAP@R/{PRODUCT}"] = np.where(counted, average_precision_at_r(h, n_rel), np.nan)
        hits[PRODUCT], n_relevant[PRODUCT] = h[:, :max(ks)], n_rel
    per_query = pd.DataFrame(columns, index=pd.Index(qrows, name="row"))
    return Evaluation(qrows, rows[:, :max(ks)], scores[:, :max(ks)], per_query, hits, n_relevant,
                      attribute_ranking)


def evaluate_queries(queries: np.ndarray, query_labels: Sequence[object], gallery: np.ndarray,
                     relevant: dict[object, np.ndarray], ks: Sequence[int] = DEFAULT_KS, *,
                     name: str = "query", ranker: Callable[..., Any] = rank) -> Evaluation:
    """Outside photos query the catalogue. ``relevant[label]`` is a boolean mask over the
    gallery of the items that count as a match for a query with that label; queries whose
    label is not in ``relevant`` are left out (NaN)."""
    ks = sorted({int(k) for k in ks})
    rows, scores = ranker(np.asarray(queries, np.float32), np.asarray(gallery, np.float32),
                          max(ks))
    labels = list(query_labels)
    known = np.array([lab in relevant for lab in labels], bool)
    masks = np.zeros((len(labels), len(gallery)), bool)
    for i, lab in enumerate(labels):
        if known[i]:
            masks[i] = relevant[lab]
    n_rel = masks.sum(axis=1)
    h = (rows >= 0) & np.take_along_axis(masks, np.maximum(rows, 0), axis=1)
    counted = known & (n_rel > 0)
    cols = {f"accuracy@1/{name}": hit_rate_at_k(h, 1)}
    for k in ks:
        cols[f"precision@{k}/{name}"] = precision_at_k(h, k)
        cols[f"mAP@{k}/{name}"] = average_precision_at_k(h, n_rel, k)
    per_query = pd.DataFrame({key: np.where(counted, v, np.nan) for key, v in cols.items()})
    return Evaluation(np.full(len(labels), -1), rows, scores, per_query, {name: h}, {name: n_rel})


def triplet_accuracy(embeddings: np.ndarray, query_rows: np.ndarray, positive_rows: np.ndarray,
                     negative_rows: np.ndarray) -> np.ndarray:
    """Per triplet: True when the positive is strictly closer to the query than the negative
    (cosine similarity of the unit embeddings; a tie counts as a miss)."""
    x = np.asarray(embeddings, dtype=np.float32)
    q = x[query_rows]
    return np.einsum("ij,ij->i", q, x[positive_rows]) > np.einsum("ij,ij->i", q, x[negative_rows])


def group_table(per_query: pd.DataFrame, groups: Sequence[object], columns: Sequence[str],
                *, min_queries: int = 1) -> pd.DataFrame:
    """Metric means per group value (e.g. per articleType), with the number of queries,
    largest groups first."""
    df = per_query[list(columns)].copy()
    df["group"] = pd.Series(list(groups), index=df.index).astype("string").fillna("(missing)")
    table = df.groupby("group").mean()
    table.insert(0, "queries", df.groupby("group").size())
    table = table[table["queries"] >= min_queries]
    return table.sort_values(["queries"], ascending=False, kind="stable")
