"""Top-k search over any kind of vector index (exact or approximate): filters, exclusions,
one hit per product. A filter that keeps few items is searched exactly over those items.

Pure functions over a faiss index and arrays; no files, no printing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import faiss
import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError
from lookalike.search.vector_index import Reranked, flat_index

Where = Mapping[str, "str | int | float | Sequence[str | int | float]"]


def parse_where(conditions: Iterable[str]) -> dict[str, list[str]]:
    """``["gender=Men", "articleType=Tshirts", "gender=Women"]`` →
    ``{"gender": ["Men", "Women"], "articleType": ["Tshirts"]}`` (values of one attribute are
    alternatives; different attributes must all match)."""
    out: dict[str, list[str]] = {}
    for c in conditions:
        key, sep, value = c.partition("=")
        if not sep or not key.strip():
            raise LookalikeError(f"filter {c!r} is not of the form ATTRIBUTE=VALUE")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def filter_values(values: str | bytes | float | Sequence[str | int | float]) -> set[str]:
    """The values a filter condition accepts, as text (one value or several)."""
    if isinstance(values, (str, bytes, int, float)):
        values = [values]
    return {str(v) for v in values}


def where_key(where: Where) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A hashable form of ``where``, equal for filters that select the same items."""
    return tuple(sorted((a, tuple(sorted(filter_values(v)))) for a, v in where.items()))


def filter_mask(items: pd.DataFrame, where: Where | None, attributes: Sequence[str]) -> np.ndarray | None:
    """Boolean mask of the items matching every condition (values compared as text), or None
    when there are no conditions."""
    if not where:
        return None
    mask = np.ones(len(items), dtype=bool)
    for attr, values in where.items():
        if attr not in items.columns or attr not in (*attributes, "product_id"):
            raise LookalikeError(f"cannot filter on {attr!r}: not an attribute of this index; "
                                 f"attributes: {', '.join(attributes) or '(none)'}")
        col = items[attr].astype("string").fillna("")
        mask &= col.isin(filter_values(values)).to_numpy()
    return mask


EXACT_BELOW = 0.2  # filters keeping fewer items than this share are searched exactly


def selector_params(bits: np.ndarray, n: int, index: object) -> faiss.SearchParameters:
    """Search parameters that let ``index`` return only the rows whose bit is set in ``bits``
    (packed little-endian, as np.packbits(mask, bitorder="little")). The caller keeps
    ``bits`` alive while the search runs."""
    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
    inner = index.index if isinstance(index, Reranked) else index  # IVF-PQ under re-ranking
    if isinstance(inner, faiss.Index) and isinstance(faiss.downcast_index(inner), faiss.IndexIVF):
        # an IVF index takes its own parameter type, which carries its nprobe too
        return faiss.SearchParametersIVF(sel=sel, nprobe=faiss.downcast_index(inner).nprobe)
    return faiss.SearchParameters(sel=sel)


def _selector(mask: np.ndarray | None, index: object
              ) -> tuple[faiss.SearchParameters | None, np.ndarray | None]:
    if mask is None:
        return None, None
    bits = np.packbits(mask, bitorder="little")  # keep alive while faiss reads it
    return selector_params(bits, len(mask), index), bits


def top_k(
    index: faiss.Index,
    query: np.ndarray,
    k: int,
    *,
    mask: np.ndarray | None = None,
    exclude_rows: Sequence[int] = (),
    products: np.ndarray | None = None,
    exclude_products: Sequence[object] = (),
    embeddings: np.ndarray | None = None,
    selector: object = None,
    available: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores (best first) of the ``k`` nearest items to one query vector.

    ``mask`` limits the candidates; ``exclude_rows`` are never returned; with ``products``
    (the product id of every row) only the best row of each product is kept and
    ``exclude_products`` are left out. Given the ``embeddings``, a mask that keeps under
    :data:`EXACT_BELOW` of the items is searched exactly over those items: an approximate
    index loses most of its recall on such narrow filters. ``selector`` is what the index
    filters with instead of the mask (a Milvus filter expression, or faiss parameters that
    skip removed items); the mask, or else ``available``, counts the candidates.
    """
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    if q.shape[1] != index.d:
        raise LookalikeError(f"query vector has {q.shape[1]} dimensions, the index {index.d}")
    if mask is not None and embeddings is not None and not isinstance(index, faiss.IndexFlat) \
            and mask.sum() < EXACT_BELOW * len(mask):
        sub = np.flatnonzero(mask)
        pos = np.searchsorted(sub, [int(r) for r in exclude_rows])
        pos = [int(p) for p, r in zip(pos, exclude_rows) if p < len(sub) and sub[p] == int(r)]
        rows, scores = top_k(flat_index(embeddings[sub]), q, k, exclude_rows=pos,
                             products=None if products is None else products[sub],
                             exclude_products=exclude_products)
        return sub[rows], scores
    n_avail = int(mask.sum()) if mask is not None else \
        index.ntotal if available is None else available
    params, _bits = (selector, None) if selector is not None else _selector(mask, index)
    excluded = np.asarray(sorted({int(r) for r in exclude_rows}), np.int64)
    fetch = min(n_avail, k + len(excluded) + (k if products is not None else 0))
    while True:
        if fetch == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores, rows = index.search(q, fetch, params=params)
        rows, scores = rows[0], scores[0]
        keep = (rows >= 0) & ~np.isin(rows, excluded)
        rows, scores = rows[keep], scores[keep]
        pos = np.arange(min(k, len(rows))) if products is None else \
            one_per_product(rows, products.__getitem__, k, exclude_products)
        if len(pos) == k or fetch >= n_avail:
            return rows[pos].astype(np.int64), scores[pos].astype(np.float32)
        fetch = min(n_avail, fetch * 4)


def one_per_product(rows: np.ndarray, product: Callable[[int], object], k: int,
                    skip: Iterable[object] = ()) -> np.ndarray:
    """Positions in best-first ``rows`` of the first ``k`` whose product (``product(row)``)
    is new and not in ``skip``."""
    out: list[int] = []
    seen = set(skip)
    for i, r in enumerate(rows.tolist()):
        p = product(r)
        if p in seen:
            continue
        seen.add(p)
        out.append(i)
        if len(out) == k:
            break
    return np.asarray(out, np.int64)
