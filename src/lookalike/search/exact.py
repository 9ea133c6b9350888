"""Exact rankings over arrays: every gallery vector scored, ties broken by gallery row.

The ranking that quality metrics, re-ranking and training measure with; deterministic, so two
runs over the same vectors give the same lists.
"""

from __future__ import annotations

import numpy as np

from lookalike.errors import LookalikeError

_BLOCK_ELEMENTS = 1 << 24  # scores held at once: 64 MB of float32
FIRST_BONUS = np.float32(4.0)  # added to the scores of the items ranked first


def _top_k_stable(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best columns by (score descending, column ascending)."""
    b, n = scores.shape
    if k < n:
        kth = np.partition(scores, n - k, axis=1)[:, n - k]
        r, c = np.nonzero(scores >= kth[:, None])  # ties at the cut all come along
    else:
        r, c = np.divmod(np.arange(b * n), n)
    v = scores[r, c]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    pos = np.arange(len(r)) - np.searchsorted(r, np.arange(b))[r]
    keep = pos < k
    rows = np.full((b, k), -1, np.int64)
    best = np.full((b, k), -np.inf, np.float32)
    rows[r[keep], pos[keep]] = c[keep]
    best[r[keep], pos[keep]] = v[keep]
    rows[~np.isfinite(best)] = -1  # excluded items never count as results
    return rows, best


def rank(queries: np.ndarray, gallery: np.ndarray, k: int, *,
         self_rows: np.ndarray | None = None,
         first: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery rows (Q, k) and scores (inner product) for each query, best
    first, ties broken by gallery row. ``self_rows[i]``, when given, is query i's own gallery
    row and is excluded. With ``first = (gallery_codes, query_codes)``, the gallery items whose
    code is the query's come before all others (a code of -1 matches nothing); scores stay the
    plain inner products. Slots beyond the gallery's size hold row -1 and score -inf."""
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    kk = min(k, len(g))
    rows = np.full((len(q), k), -1, np.int64)
    scores = np.full((len(q), k), -np.inf, np.float32)
    block = max(1, _BLOCK_ELEMENTS // max(1, len(g)))
    for start in range(0, len(q), block):
        s = q[start:start + block] @ g.T
        if self_rows is not None:
            s[np.arange(len(s)), self_rows[start:start + block]] = -np.inf
        if first is not None:  # inner products lie in [-1, 1] for unit vectors: +4 goes first
            wanted = first[1][start:start + block, None]
            s += FIRST_BONUS * ((first[0][None, :] == wanted) & (wanted >= 0))
        r, v = _top_k_stable(s, kk)
        if first is not None:
            v = v - FIRST_BONUS * ((first[0][np.maximum(r, 0)] == wanted) & (wanted >= 0))
        rows[start:start + len(s), :kk], scores[start:start + len(s), :kk] = r, v
    return rows, scores


def drop_same_group(rows: np.ndarray, scores: np.ndarray, query_groups: np.ndarray,
                    gallery_groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove, from each ranked list, the items of the query's own group (e.g. its product),
    keeping the order of the rest; the first ``k`` survivors, padded with -1 / -inf."""
    same = (rows >= 0) & (gallery_groups[np.maximum(rows, 0)] == query_groups[:, None])
    keep = (rows >= 0) & ~same
    pos = np.cumsum(keep, axis=1) - 1
    out = np.full((len(rows), k), -1, np.int64)
    out_scores = np.full((len(rows), k), -np.inf, np.float32)
    take = keep & (pos < k)
    out[np.nonzero(take)[0], pos[take]] = rows[take]
    out_scores[np.nonzero(take)[0], pos[take]] = scores[take]
    return out, out_scores
