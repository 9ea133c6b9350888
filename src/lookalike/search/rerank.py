"""Re-ranking a query's neighbours: a category vote or classifier, and α-query expansion.

- **Category vote.** The query's category is predicted from its ``depth`` nearest neighbours
  (each votes for its category with its similarity), and the items of that category are ranked
  first, in their own order; the rest follow. A photo of a T-shirt whose nearest items are six
  T-shirts and four caps gets ten T-shirts.
- **Category classifier** (``classify``): the same, with the category given by the classifier
  ``lookalike train`` fits on the embedding (:mod:`lookalike.search.classifier`) instead of the vote.
- **α-query expansion** (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human
  Annotation", TPAMI 2018): the query is replaced by the normalised sum of itself and its
  ``expand`` nearest neighbours, each weighted by its similarity to the power ``alpha``; then
  searched again.

Both are pure functions over arrays here; :mod:`lookalike.api` runs them through the index's
searches (with filters, exclusions, one hit per product), :func:`reranked` through exact
rankings of whole query sets for evaluation: the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.search.exact import rank

NAMES = ("vote", "classify", "expand")
#: an index's vote searches this many times k first: most answers lie in that pool
VOTE_POOL = 4


@dataclass(frozen=True)
class Rerank:
    """Which re-ranking a search runs: ``vote`` neighbours that vote for the category (0:
    off) or the category ``classify``-ed by the index's classifier, and ``expand`` neighbours
    merged into the query (0: off), weighted by ``alpha``."""

    vote: int = 0
    expand: int = 0
    alpha: float = 3.0
    classify: bool = False

    def __post_init__(self) -> None:
        if self.vote < 0 or self.expand < 0:
            raise LookalikeError(f"re-ranking depths must be 0 or more, got vote={self.vote}, "
                                 f"expand={self.expand}")
        if self.vote and self.classify:
            raise LookalikeError("choose one way to find the category: vote or classify")

    @property
    def categorises(self) -> bool:
        """True when the search ranks a predicted category first (vote or classifier)."""
        return bool(self.vote or self.classify)

    @classmethod
    def parse(cls, text: str | None) -> Rerank:
        """``"none"``, ``"vote"`` (10 neighbours), ``"vote=20"``, ``"classify"``, ``"expand"``
        (1 neighbour), ``"expand=3"``, comma-separated (vote or classify, not both)."""
        out: dict[str, Any] = {}
        for part in (text or "").split(","):
            name, sep, value = part.strip().lower().partition("=")
            if name in ("", "none"):
                continue
            if name not in NAMES:
                raise LookalikeError(f"unknown re-ranking {name!r}; choose from "
                                     f"{', '.join(NAMES)} or none (e.g. vote=10,expand=1)")
            if name == "classify":
                if sep:
                    raise LookalikeError("classify takes no value")
                out[name] = True
                continue
            try:
                out[name] = int(value) if sep else {"vote": 10, "expand": 1}[name]
            except ValueError:
                raise LookalikeError(f"re-ranking {part.strip()!r}: the depth must be a whole "
                                     "number") from None
        return cls(**out)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Rerank:
        d = d or {}  # indexes before re-ranking: none
        return cls(int(d.get("vote", 0)), int(d.get("expand", 0)), float(d.get("alpha", 3.0)),
                   bool(d.get("classify", False)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __bool__(self) -> bool:
        return bool(self.vote or self.expand or self.classify)

    def __str__(self) -> str:
        parts = [f"vote={self.vote}"] * bool(self.vote) + ["classify"] * self.classify \
            + [f"expand={self.expand}"] * bool(self.expand)
        return ",".join(parts) or "none"


def expand_queries(queries: np.ndarray, neighbours: np.ndarray, scores: np.ndarray,
                   alpha: float) -> np.ndarray:
    """α-QE: each query (n, d) plus its neighbours' vectors (n, m, d) weighted by
    max(similarity, 0) ** alpha, normalised to unit length. Missing neighbours (score -inf)
    weigh nothing."""
    w = np.where(np.isfinite(scores), np.maximum(scores, 0), 0) ** alpha
    out = np.asarray(queries, np.float32) + np.einsum("nm,nmd->nd", w, neighbours)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norm > 0, norm, 1)).astype(np.float32)


def vote(categories: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The winning category code per query: ``categories`` (n, m) of each query's neighbours
    (-1: none or unknown) vote with their similarity (at least a small positive weight, so
    that a list of negative scores still elects its majority). -1 where nobody voted."""
    n, m = categories.shape
    valid = (categories >= 0) & np.isfinite(scores)
    weight = np.where(valid, np.maximum(scores, 0) + 1e-3, 0)
    width = int(categories.max(initial=-1)) + 1
    if width == 0:
        return np.full(n, -1, np.int64)
    tally = np.zeros((n, width))
    np.add.at(tally, (np.repeat(np.arange(n), m), np.maximum(categories, 0).ravel()),
              weight.ravel())
    return np.where(tally.max(axis=1) > 0, tally.argmax(axis=1), -1)


Ranker = Callable[..., tuple[np.ndarray, np.ndarray]]  # evaluate.rank's signature


def reranked(rerank: Rerank, categories: np.ndarray | None,
             classify: Callable[[np.ndarray], np.ndarray] | None = None) -> Ranker:
    """A function like :func:`lookalike.search.exact.rank` (``queries, gallery, k, self_rows=``)
    that runs ``rerank`` over exact rankings; ``categories`` holds the gallery's category
    codes (-1: unknown), needed by the vote and the classifier; ``classify`` maps query
    vectors to category codes (-1: a category the gallery lacks). Scores keep their plain
    similarities."""
    if rerank.categorises and categories is None:
        raise LookalikeError("ranking a category first needs the index's category column; this "
                             "index has none (build it with a category column, or re-rank "
                             "without vote or classify)")
    if rerank.classify and classify is None:
        raise LookalikeError("re-ranking with classify needs a category classifier")

    def run(queries: np.ndarray, gallery: np.ndarray, k: int, *,
            self_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        g = np.asarray(gallery, np.float32)
        if rerank.expand:
            rows, scores = rank(q, g, rerank.expand, self_rows=self_rows)
            q = expand_queries(q, g[np.maximum(rows, 0)], np.where(rows >= 0, scores, -np.inf),
                               rerank.alpha)
        if not rerank.categorises:
            return rank(q, g, k, self_rows=self_rows)
        assert categories is not None
        if classify is not None and rerank.classify:
            won = np.asarray(classify(q), np.int64)
        else:
            rows, scores = rank(q, g, rerank.vote, self_rows=self_rows)
            won = vote(np.where(rows >= 0, categories[np.maximum(rows, 0)], -1), scores)
        return rank(q, g, k, self_rows=self_rows, first=(categories, won))

    return run
