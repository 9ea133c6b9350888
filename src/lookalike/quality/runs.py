"""Quality of one or more index folders, on the same queries: the catalogue against itself,
a set of outside photos (through a label mapping) and a triplet file.

The numbers come from :mod:`lookalike.quality.metrics`; this module reads the inputs, checks them,
and lines the indexes up so that a comparison uses exactly the same queries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.api import Index
from lookalike.embed.local import EmbedResult, embed_images
from lookalike.errors import ImageError, LookalikeError, require_column
from lookalike.ingest.catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PRODUCT_ID,
    Catalog,
    label_codes,
    visual_attributes,
)
from lookalike.ingest.images import ImageSource
from lookalike.quality.inputs import TRIPLET_TYPES, LabelMapping, read_triplets
from lookalike.quality.metrics import (
    DEFAULT_KS,
    Evaluation,
    evaluate_catalog,
    evaluate_queries,
    triplet_accuracy,
)
from lookalike.quality.splits import assign_splits
from lookalike.search.classifier import coded
from lookalike.search.exact import rank
from lookalike.search.rerank import Ranker, Rerank, reranked

# --------------------------------------------------------------------------- inputs


def default_relevances(items: pd.DataFrame, attributes: Sequence[str],
                       category: str | None = None, color: str | None = None
                       ) -> list[list[str]]:
    """Each categorical attribute that says how an item looks, on its own: at least 2 values,
    at least half of the items share their value with another item (names and ids, nearly
    unique, are left out), not numeric and not named like a season, year, date, time or price.
    The finest first (most values, e.g. articleType before gender): it leads reports and
    galleries; the category and colour together follow the category."""
    out = visual_attributes(items, attributes)
    rels = [[a] for a in sorted(out, key=lambda a: -items[a].nunique())]
    if category in out and color in out:
        at = rels.index([category]) + 1
        rels.insert(at, [category, color])
    return rels


# --------------------------------------------------------------------------- results

@dataclass
class QueryRun:
    """Outside photos against one index: the photos that could be embedded, their labels."""

    evaluation: Evaluation
    paths: list[Path]
    labels: list[str]
    skipped: dict[str, str]  # photo → reason
    mapping: LabelMapping


@dataclass
class IndexQuality:
    label: str
    index: Index
    catalog: Evaluation
    queries: QueryRun | None = None
    triplets: pd.DataFrame | None = None  # one row per triplet with ``correct``
    notes: list[str] = field(default_factory=list)
    gallery: int = 0  # items the catalogue queries were ranked among

    @property
    def metrics(self) -> dict[str, float]:
        out = dict(self.catalog.metrics)
        if self.queries is not None:
            out.update(self.queries.evaluation.metrics)
        if self.triplets is not None:
            out.update(triplet_metrics(self.triplets))
        return out


def triplet_metrics(triplets: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {"accuracy/triplets": float(triplets["correct"].mean()),
                             "count/triplets": len(triplets)}
    for col in TRIPLET_TYPES:
        if col in triplets.columns:
            for value, part in triplets.groupby(col, sort=True)["correct"]:
                out[f"accuracy/triplets:{value}"] = float(part.mean())
    return out


def index_labels(indexes: Sequence[Index]) -> list[str]:
    """Short names for tables: the embedder, or the folder when two share an embedder."""
    models = [ix.model for ix in indexes]
    if len(set(models)) == len(models):
        return models
    names = [ix.path.name for ix in indexes]
    return names if len(set(names)) == len(names) else [str(ix.path) for ix in indexes]


def common_queries(indexes: Sequence[Index], sample: int | None, seed: int) -> list[str]:
    """Item ids every index has (in the first index's order), optionally a seeded sample."""
    ids = indexes[0].items[ITEM_ID].astype(str)
    for ix in indexes[1:]:
        ids = ids[ids.isin(set(ix.items[ITEM_ID].astype(str)))]
    ids = ids.tolist()
    if not ids:
        raise LookalikeError("the indexes have no item in common: nothing to compare")
    if sample is not None and sample < len(ids):
        if sample < 1:
            raise LookalikeError(f"sample= must be at least 1, got {sample}")
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), sample, replace=False))
        ids = [ids[i] for i in pick]
    return ids


def evaluate_indexes(
    paths: Sequence[str | os.PathLike],
    *,
    relevances: Sequence[Sequence[str]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    sample: int | None = None,
    seed: int = 0,
    exclude_product: bool = False,
    query_set: Catalog | None = None,
    query_label_column: str = "label",
    mapping: LabelMapping | None = None,
    triplets: str | os.PathLike | None = None,
    split: str | None = None,
    split_options: dict[str, float] | None = None,
    rerank: Rerank | None = None,
    progress: bool = False,
) -> list[IndexQuality]:
    """Evaluate each index folder on the same catalogue queries (and query photos, triplets).

    With ``split`` ("test", say), only the items of that split of products take part, as
    queries and as the gallery (``split_options``: ``test``, ``val``, ``seed`` of
    :func:`lookalike.quality.splits.assign_splits`). Every ranking is re-ranked as ``rerank`` says
    (default: as each index's searches are, :attr:`Index.rerank`)."""
    if not paths:
        raise LookalikeError("give at least one index folder")
    if (query_set is None) != (mapping is None):
        raise LookalikeError("a query set needs a label mapping, and a mapping a query set")
    indexes = [Index.open(p) for p in paths]
    labels = index_labels(indexes)
    query_ids = common_queries(indexes, sample, seed)
    rels = [list(r) for r in relevances] if relevances else \
        default_relevances(indexes[0].items, indexes[0].attributes, indexes[0].category,
                           indexes[0].color)
    results = []
    for label, ix in zip(labels, indexes):
        notes: list[str] = []
        for attrs in rels:
            for a in attrs:
                require_column(ix.attributes, a, f"an attribute of index {ix.path}")
        if len(ix) != len(query_ids) and sample is None:
            notes.append(f"{len(ix) - len(query_ids)} item(s) of this index are not in every "
                         "index and were not used as queries")
        r = ix.reranking(rerank)
        ev, gallery = _catalogue_run(ix, query_ids, rels, ks, exclude_product, split,
                                     split_options, r, notes)
        result = IndexQuality(label, ix, ev, notes=notes, gallery=len(gallery))
        if query_set is not None and mapping is not None:
            result.queries = _run_queries(ix, query_set, query_label_column, mapping, ks,
                                          _ranker(ix, r, ix.items), progress)
            unknown = mapping.unknown_values(ix.items)
            if unknown:
                notes.append(f"mapped value(s) no item has: {', '.join(unknown)}")
        if triplets is not None:
            t = read_triplets(triplets, ix.items[ITEM_ID])
            t["correct"] = triplet_accuracy(ix.embeddings, t["query_row"].to_numpy(),
                                            t["positive_row"].to_numpy(),
                                            t["negative_row"].to_numpy())
            result.triplets = t
        results.append(result)
    return results


def _catalogue_run(ix: Index, query_ids: list[str], rels: list[list[str]], ks: Sequence[int],
                   exclude_product: bool, split: str | None,
                   split_options: dict[str, float] | None, r: Rerank, notes: list[str]
                   ) -> tuple[Evaluation, np.ndarray]:
    """The catalogue against itself (one split of it, with ``split``): the evaluation and the
    gallery rows."""
    qrows = np.array([ix.row(i) for i in query_ids], np.int64)
    products = ix.items[PRODUCT_ID].to_numpy() if ix.manifest["catalog"].get("has_products") \
        else None
    gallery = np.arange(len(ix))
    if split is not None:
        gallery = np.flatnonzero(assign_splits(ix.items[PRODUCT_ID].to_numpy(),
                                               **(split_options or {})) == split)
        qrows = qrows[np.isin(qrows, gallery)]
        if len(qrows) == 0:
            raise LookalikeError(f"index {ix.path}: no item falls in the {split!r} split")
        notes.append(f"{split} split only: {len(gallery)} items, queries and gallery alike")
    position = np.full(len(ix), -1)
    position[gallery] = np.arange(len(gallery))
    items = ix.items.iloc[gallery].reset_index(drop=True)
    if r:
        notes.append(f"re-ranked: {r}")
    ev = evaluate_catalog(np.asarray(ix.embeddings)[gallery], items, rels, ks,
                          products=None if products is None else products[gallery],
                          query_rows=position[qrows], exclude_product=exclude_product,
                          ranker=_ranker(ix, r, items)).on_rows(gallery)
    return ev, gallery


def _ranker(ix: Index, r: Rerank, gallery: pd.DataFrame) -> Ranker:
    """Exact ranking of ``gallery`` (some of ``ix``'s items) re-ranked as ``r`` says."""
    if not r:
        return rank
    head = ix.classifier if r.classify else None
    if head is not None and ix.category:
        return reranked(r, *coded(head, gallery, ix.category))
    return reranked(r, label_codes(gallery, [ix.category]) if ix.category else None)


def _embed_views(ix: Index, paths: Sequence[ImageSource], skip: dict[int, str]) -> EmbedResult:
    """Query photos embedded one by one as :meth:`Index.search` does, averaged over the
    index's views (test-time augmentation)."""
    vectors, rows, skipped = [], [], dict(skip)
    for i, path in enumerate(paths):
        if i in skipped:
            continue
        try:
            vectors.append(ix.embed(path))
            rows.append(i)
        except ImageError as e:
            skipped[i] = str(e)
    return EmbedResult(np.asarray(vectors, np.float32).reshape(len(rows), ix.embedder.dim),
                       np.asarray(rows, np.int64), skipped)


def _run_queries(ix: Index, query_set: Catalog, label_column: str, mapping: LabelMapping,
                 ks: Sequence[int], ranker: Ranker, progress: bool) -> QueryRun:
    paths = [query_set.image_file(i) for i in range(len(query_set))]
    skip = dict(query_set.missing)
    emb = embed_images(ix.embedder, paths, progress=progress, skip=skip,
                       preprocess=ix.preprocess) if not ix.views else \
        _embed_views(ix, paths, skip)
    if len(emb.rows) == 0:
        raise LookalikeError(f"none of the {len(paths)} query photos could be read "
                             f"(first problem: {next(iter(emb.skipped.values()))})")
    labels = [str(query_set.items[label_column].iat[r]) for r in emb.rows]
    ev = evaluate_queries(emb.embeddings, labels, ix.embeddings, mapping.masks(ix.items), ks,
                          name=mapping.name, ranker=ranker)
    ev.per_query.index = pd.Index(emb.rows, name="query")
    skipped = {str(query_set.items[IMAGE_PATH].iat[r]): why for r, why in emb.skipped.items()}
    return QueryRun(ev, [paths[r] for r in emb.rows], labels, skipped, mapping)
