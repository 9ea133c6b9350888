"""Triplets (query, positive, negative) sampled from the catalogue's metadata, vectorised.

The original recipe's four kinds:

- positive ``same_product``: another photo of the query's product; ``same_product_augmented``
  when the product has a single photo (the positive is then an augmented view of the query's
  own photo, made at training time); ``same_category_color``: another item with the query's
  category and colour.
- negative ``in_class``: same category, another colour; ``out_of_class``: another category.

Queries are drawn uniformly over items, so categories come up in proportion to their size.
Rows that cannot be formed (a category+colour with one item, a category with one colour, a
catalogue with one category) are skipped and counted by reason.

A catalogue without a colour column samples as if every item had the same colour (positives:
same category; negatives: another category). One with neither category nor colour samples
same-product positives only, and its negatives are other products: the hardest ones when
``hard_negatives`` lists, per item, the nearest items of other products (mined from the
current embedding by the caller).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.errors import LookalikeError, require_column
from lookalike.files import atomic_path
from lookalike.ingest.catalog import DEFAULT_CATEGORY, DEFAULT_COLOR, PRODUCT_ID

POSITIVE_TYPES = ("same_product", "same_product_augmented", "same_category_color")
NEGATIVE_TYPES = ("in_class", "out_of_class")
COLUMNS = ("query_id", "positive_id", "negative_id", "positive_type", "negative_type")


@dataclass
class TripletSet:
    """Triplets as catalogue rows (``query``, ``positive``, ``negative``) plus their types."""

    query: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    positive_type: np.ndarray  # index into POSITIVE_TYPES
    negative_type: np.ndarray  # index into NEGATIVE_TYPES
    requested: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query)

    def table(self, item_ids: np.ndarray) -> pd.DataFrame:
        ids = np.asarray(item_ids, dtype=object)
        return pd.DataFrame({
            "query_id": ids[self.query], "positive_id": ids[self.positive],
            "negative_id": ids[self.negative],
            "positive_type": pd.Categorical.from_codes(self.positive_type, POSITIVE_TYPES),
            "negative_type": pd.Categorical.from_codes(self.negative_type, NEGATIVE_TYPES),
        })


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Items sorted by ``keys`` and, per item, its group's start, size and own position in
    that order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts_u = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes_u = np.diff(np.r_[starts_u, len(keys)])
    group_of_sorted = np.repeat(np.arange(len(starts_u)), sizes_u)
    start = np.empty(len(keys), np.int64)
    size = np.empty(len(keys), np.int64)
    pos = np.empty(len(keys), np.int64)
    start[order] = starts_u[group_of_sorted]
    size[order] = sizes_u[group_of_sorted]
    pos[order] = np.arange(len(keys))
    return order, start, size, pos


def _other_in_group(rng: np.random.Generator, q: np.ndarray, order: np.ndarray,
                    start: np.ndarray, size: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """A random other member of each query's group (undefined where the group has one)."""
    r = rng.integers(0, np.maximum(size[q] - 1, 1))
    idx = start[q] + r
    idx += idx >= pos[q]  # skip the query itself
    return order[np.minimum(idx, len(order) - 1)]


def roles(columns: Collection[str], index_roles: tuple[str | None, str | None],
          category: str | None, color: str | None, log: Callable[[str], None] = print
          ) -> tuple[str | None, str | None]:
    """The category and colour columns triplets are drawn by: those named, else the index's
    (``index_roles``), else articleType and baseColour where the items have them. A default
    left out is said in a note; a named column that is absent is an error."""
    for col, param in ((category, "category="), (color, "color=")):
        if col is not None:
            require_column(columns, col, param)
    if category is None:
        category = index_roles[0] or (DEFAULT_CATEGORY if DEFAULT_CATEGORY in columns else None)
        if category is None:
            log("note: no category column: training on products alone (positives: other "
                "photos of the product; negatives: the nearest other products)")
    if color is None and category is not None:
        color = index_roles[1] or (DEFAULT_COLOR if DEFAULT_COLOR in columns else None)
        if color is None:
            log(f"note: no {DEFAULT_COLOR!r} column: colour takes no part (name one with "
                "color=)")
    if category is None and color is not None:
        raise LookalikeError("color= needs a category column (category=)")
    return category, color


def eligible(items: pd.DataFrame, category: str | None, color: str | None) -> np.ndarray:
    """Items that can take part in triplets: they have a category and a colour (those of the
    two the catalogue has)."""
    ok = np.ones(len(items), bool)
    for c in (category, color):
        if c is not None:
            s = items[c].astype("string")
            ok &= (s.notna() & (s.str.strip() != "")).to_numpy(dtype=bool)
    return ok


def single_photo(items: pd.DataFrame, rows: np.ndarray, product: str, category: str | None,
                 color: str | None) -> np.ndarray:
    """Which of ``rows`` are the only eligible photo of their product among ``rows``: the
    ones whose same-product positive is an augmented view."""
    ok = eligible(items, category, color)[rows]
    prod = items[product].astype("string").fillna("").to_numpy()[rows]
    counts = pd.Series(prod[ok]).value_counts()
    return ok & (pd.Series(prod).map(counts).fillna(0).to_numpy() == 1)


def sample_triplets(items: pd.DataFrame, n: int, *, category: str | None, color: str | None,
                    product: str = PRODUCT_ID, p_same_product: float = 0.9,
                    p_in_class: float = 0.3, rows: np.ndarray | None = None,
                    seed: int = 0, hard_negatives: np.ndarray | None = None) -> TripletSet:
    """Sample ``n`` triplets among ``rows`` of ``items`` (default: all). Returned rows index
    ``items``. Items without a category or colour take no part and are counted. Without a
    ``color``, every item counts as one colour; without a ``category`` either, positives are
    same-product ones and negatives other products (drawn from ``hard_negatives[row]``, the
    item rows nearest each row among other products, where given)."""
    p_same_product, p_in_class = _shares(items, n, category, color, product, p_same_product,
                                         p_in_class)
    pool = np.arange(len(items)) if rows is None else np.asarray(rows, np.int64)
    known = eligible(items, category, color)[pool]
    skipped = {"items without category or colour (left out)": int((~known).sum())}
    pool = pool[known]
    if len(pool) < 2:
        raise LookalikeError(f"need at least 2 items with a {category!r} and a {color!r} to form "
                             f"triplets, found {len(pool)}")
    prod = pd.factorize(items[product].astype("string").fillna("").iloc[pool].to_numpy())[0]
    # a missing role: one colour for all; no category either: each product its own category
    cat = prod if category is None else \
        pd.factorize(items[category].astype("string").iloc[pool].to_numpy())[0]
    col = np.zeros(len(pool), np.int64) if color is None else \
        pd.factorize(items[color].astype("string").iloc[pool].to_numpy())[0]
    m = len(pool)
    rng = np.random.default_rng(seed)

    q = rng.integers(0, m, n)
    pos_, pt, no_pos = _positives(rng, q, prod, cat, col, p_same_product)
    neg, nt, no_neg = _negatives(rng, q, cat, col, p_in_class)
    if hard_negatives is not None:  # mined: one of each query's nearest other products
        where_in_pool = np.full(len(items), -1, np.int64)
        where_in_pool[pool] = np.arange(m)
        cand = where_in_pool[np.maximum(hard_negatives[pool[q]], 0)]
        cand[hard_negatives[pool[q]] < 0] = -1
        pick = cand[np.arange(n), rng.integers(0, cand.shape[1], n)]
        neg = np.where((nt == 1) & (pick >= 0), pick, neg)

    ok = ~no_pos & ~no_neg
    skipped["no other item of the same category and colour"] = int(no_pos.sum())
    skipped["in-class negative impossible (category with one colour)"] = int(
        (no_neg & (nt == 0) & ~no_pos).sum())
    skipped["out-of-class negative impossible (one category)"] = int(
        (no_neg & (nt == 1) & ~no_pos).sum())
    return TripletSet(pool[q[ok]], pool[pos_[ok]], pool[neg[ok]], pt[ok].astype(np.int8),
                      nt[ok].astype(np.int8), requested=n, skipped=skipped)


def _shares(items: pd.DataFrame, n: int, category: str | None, color: str | None,
            product: str, p_same_product: float, p_in_class: float) -> tuple[float, float]:
    """The roles checked, and the shares of same-product positives and in-class negatives
    that the roles allow."""
    if category is None and color is not None:
        raise LookalikeError("a colour role needs a category role")
    if category is None:
        p_same_product, p_in_class = 1.0, 0.0
    elif color is None:
        p_in_class = 0.0
    for col, param in ((category, "category="), (color, "color="), (product, "product=")):
        if col is not None:
            require_column(items.columns, col, param)
    for p, name in ((p_same_product, "p_same_product"), (p_in_class, "p_in_class")):
        if not 0 <= p <= 1:
            raise LookalikeError(f"{name} must be between 0 and 1, got {p}")
    if n < 1:
        raise LookalikeError(f"the number of triplets must be at least 1, got {n}")
    return p_same_product, p_in_class


def _positives(rng: np.random.Generator, q: np.ndarray, prod: np.ndarray, cat: np.ndarray,
               col: np.ndarray, p_same_product: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's positive (pool positions), its type, and whether it has none: another
    photo of the product (the query itself, augmented, when it has one photo), or another
    item of the same category and colour."""
    n = len(q)
    pt = np.where(rng.random(n) < p_same_product, 0, 2)
    po, ps, psz, ppos = _groups(prod)
    same_prod = _other_in_group(rng, q, po, ps, psz, ppos)
    single = psz[q] == 1
    cc = cat * (col.max() + 1) + col
    co, cs, csz, cpos = _groups(cc)
    same_cc = _other_in_group(rng, q, co, cs, csz, cpos)
    pos_ = np.where(pt == 0, np.where(single, q, same_prod), same_cc)
    pt = np.where((pt == 0) & single, 1, pt)
    return pos_, pt, (pt == 2) & (csz[q] == 1)


def _negatives(rng: np.random.Generator, q: np.ndarray, cat: np.ndarray, col: np.ndarray,
               p_in_class: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's negative, its type (in-class or out-of-class), and whether it has none:
    within the category block (sorted by category then colour) the query's own colour block
    is skipped; outside it, the query's whole category block."""
    n, m = len(q), len(cat)
    nt = np.where(rng.random(n) < p_in_class, 0, 1)
    key = cat.astype(np.int64) * (col.max() + 1) + col
    ko, kstart, ksize, _ = _groups(key)  # colour blocks inside category blocks
    _, cstart, csize, _ = _groups(cat)  # same order: sorting by key sorts by category
    in_span = csize[q] - ksize[q]
    r = rng.integers(0, np.maximum(in_span, 1))
    idx_in = cstart[q] + r
    idx_in += np.where(idx_in >= kstart[q], ksize[q], 0)
    out_span = m - csize[q]
    r = rng.integers(0, np.maximum(out_span, 1))
    idx_out = r + np.where(r >= cstart[q], csize[q], 0)
    neg = ko[np.minimum(np.where(nt == 0, idx_in, idx_out), m - 1)]
    return neg, nt, np.where(nt == 0, in_span == 0, out_span == 0)


def write_triplets(triplets: TripletSet, item_ids: np.ndarray, out: str | os.PathLike) -> Path:
    """Write the triplets as Parquet (``COLUMNS``), atomically."""
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise LookalikeError(f"triplet output {out}: use a .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(pa.Table.from_pandas(triplets.table(item_ids), preserve_index=False), tmp)
    return out


__all__ = ["COLUMNS", "NEGATIVE_TYPES", "POSITIVE_TYPES", "TripletSet", "eligible", "roles",
           "sample_triplets", "single_photo", "write_triplets"]
