"""Quality of one or more index folders, on the same queries: the catalogue against itself,
a set of outside photos (through a label mapping) and a triplet file.

The numbers come from :mod:`lookalike.quality.metrics`; this module reads the inputs, checks them,
and lines the indexes up so that a comparison uses exactly the same queries.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.api import Index
from lookalike.embed.local import EmbedResult, embed_images
from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PARQUET_SUFFIXES,
    PRODUCT_ID,
    Catalog,
    label_codes,
    read_catalog,
)
from lookalike.ingest.images import ImageSource
from lookalike.quality.metrics import (
    DEFAULT_KS,
    Evaluation,
    evaluate_catalog,
    evaluate_queries,
    triplet_accuracy,
)
from lookalike.search.classifier import coded
from lookalike.search.exact import rank
from lookalike.search.rerank import Ranker, Rerank, reranked
from lookalike.training.splits import assign_splits, group_splits

TRIPLET_COLUMNS = ("query_id", "positive_id", "negative_id")
TRIPLET_TYPES = ("positive_type", "negative_type")


# --------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class LabelMapping:
    """Which catalogue items count as a match for a query photo with a given label:
    items whose ``attribute`` is one of ``labels[label]``."""

    source: Path
    attribute: str
    labels: dict[str, tuple[str, ...]]

    @property
    def name(self) -> str:
        return f"query:{self.attribute}"

    def masks(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        if self.attribute not in items.columns:
            raise LookalikeError(f"label mapping {self.source.name}: the index has no attribute "
                                 f"{self.attribute!r}")
        values = items[self.attribute].astype("string")
        return {lab: values.isin(vals).fillna(False).to_numpy(bool)
                for lab, vals in self.labels.items()}

    def unknown_values(self, items: pd.DataFrame) -> list[str]:
        """Mapped values that no catalogue item has (typos, or absent from this catalogue)."""
        present = set(items[self.attribute].dropna().astype(str))
        return sorted({v for vals in self.labels.values() for v in vals} - present)


def read_label_mapping(path: str | os.PathLike) -> LabelMapping:
    """Read a mapping from query labels to catalogue attribute values.

    YAML or JSON: ``{"attribute": "articleType", "labels": {"Pants": ["Trousers", "Jeans"]}}``
    (a single value may be written without the list). CSV: a header ``label,<attribute>`` and one
    row per (label, value) pair; a label may have several rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"label mapping not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(path, dtype="string", keep_default_na=False)
        if len(df.columns) != 2 or df.columns[0] != "label":
            raise LookalikeError(f"label mapping {path.name}: expected a header 'label,<attribute>'"
                                 f", got {','.join(df.columns)}")
        attribute = str(df.columns[1])
        labels: dict[str, list[str]] = {}
        for lab, val in zip(df["label"], df[attribute]):
            labels.setdefault(str(lab), []).append(str(val))
    elif suffix in (".yaml", ".yml", ".json"):
        try:
            if suffix == ".json":
                data = json.loads(path.read_text())
            else:
                import yaml

                data = yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001 (yaml and json raise different kinds)
            raise LookalikeError(f"label mapping {path.name} could not be parsed: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("attribute"), str) \
                or not isinstance(data.get("labels"), dict):
            raise LookalikeError(f"label mapping {path.name}: expected keys 'attribute' (a column "
                                 "name) and 'labels' (label → list of values)")
        attribute = data["attribute"]
        labels = {}
        for lab, vals in data["labels"].items():
            vals = [vals] if isinstance(vals, (str, int, float)) else vals
            if not isinstance(vals, list) or not vals:
                raise LookalikeError(f"label mapping {path.name}: label {lab!r} needs a value or "
                                     "a non-empty list of values")
            labels[str(lab)] = [str(v) for v in vals]
    else:
        raise LookalikeError(f"label mapping {path.name}: use a .yaml, .yml, .json or .csv file")
    if not labels:
        raise LookalikeError(f"label mapping {path.name} maps no labels")
    return LabelMapping(path, attribute, {k: tuple(v) for k, v in labels.items()})


def read_query_set(path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                   image_column: str = "image_path", label_column: str = "label",
                   group_column: str | None = None, split: str | None = None,
                   test_fraction: float = 0.5, seed: int = 0) -> Catalog:
    """A table of query photos with a label each (e.g. street-photos/photos.csv). The image
    path is the query's id; rows whose photo is missing are reported in ``missing``.

    With ``group_column`` (e.g. ``sender_id``: who took the photo) and ``split`` (``train`` or
    ``test``), only the photos of that split of groups: a group lands in test with probability
    ``test_fraction`` by a seeded hash of its value (:func:`lookalike.training.splits.group_splits`,
    as ``lookalike train --queries`` splits them), so that no person's photos are both trained
    on and measured."""
    if split is not None and group_column is None:
        raise LookalikeError("a query split needs the group column (--query-split with "
                             "--query-group-column)")
    cat = read_catalog(path, images, id_column=image_column, image_column=image_column,
                       attributes=[label_column] + ([group_column] if group_column else []),
                       allow_outside_images=True, id_rule=False)  # photos to query with
    if cat.items[label_column].isna().any():
        rows = (cat.items[label_column].isna().to_numpy().nonzero()[0][:10] + 2).tolist()
        raise LookalikeError(f"query set {Path(path).name}: rows without a label "
                             f"(column {label_column!r}) at line(s) {rows}")
    if split is None:
        return cat
    keep = np.flatnonzero(group_splits(cat.items[group_column].to_numpy(), test=test_fraction,
                                       seed=seed) == split)
    if not len(keep):
        raise LookalikeError(f"query set {Path(path).name}: no photo falls in the {split!r} "
                             f"split of {group_column!r}")
    position = {int(r): i for i, r in enumerate(keep)}
    return dataclasses.replace(
        cat, items=cat.items.iloc[keep].reset_index(drop=True),
        missing={position[r]: why for r, why in cat.missing.items() if r in position})


def read_triplets(path: str | os.PathLike, item_ids: pd.Series) -> pd.DataFrame:
    """A triplet file (.parquet or .csv with ``query_id, positive_id, negative_id`` and
    optionally ``positive_type, negative_type``), with the ids turned into index rows."""
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"triplet file not found: {path}")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        df = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype="string", keep_default_na=False)
    else:
        raise LookalikeError(f"triplet file {path.name}: use .parquet or .csv")
    missing = [c for c in TRIPLET_COLUMNS if c not in df.columns]
    if missing:
        raise LookalikeError(f"triplet file {path.name}: missing column(s) {missing}; "
                             f"columns found: {', '.join(map(str, df.columns))}")
    lookup = pd.Index(item_ids.astype(str))
    out = pd.DataFrame(index=df.index)
    for col in TRIPLET_COLUMNS:
        ids = df[col].astype("string").fillna("")
        rows = lookup.get_indexer(ids.to_numpy(dtype=str))
        bad = np.nonzero(rows < 0)[0]
        if len(bad):
            shown = ", ".join(f"{ids.iat[i]!r} (row {i})" for i in bad[:5])
            raise LookalikeError(f"triplet file {path.name}: {len(bad)} {col} value(s) are not "
                                 f"items of the index: {shown}")
        out[col.replace("_id", "_row")] = rows
    for col in TRIPLET_TYPES:
        if col in df.columns:
            out[col] = df[col].astype("string").to_numpy()
    if len(out) == 0:
        raise LookalikeError(f"triplet file {path.name} has no rows")
    return out


#: words in a column's name that say it is not about how an item looks (seasons, years, dates)
NON_VISUAL = ("season", "year", "date", "time", "price")


def default_relevances(items: pd.DataFrame, attributes: Sequence[str],
                       category: str | None = None, color: str | None = None
                       ) -> list[list[str]]:
    """Each categorical attribute that says how an item looks, on its own: at least 2 values,
    at least half of the items share their value with another item (names and ids, nearly
    unique, are left out), not numeric and not named like a season, year, date, time or price.
    The finest first (most values, e.g. articleType before gender): it leads reports and
    galleries; the category and colour together follow the category."""
    out = []
    for a in attributes:
        if pd.api.types.is_numeric_dtype(items[a]) or \
                any(w in str(a).lower() for w in NON_VISUAL):
            continue
        counts = items[a].map(items[a].value_counts())
        if items[a].nunique() >= 2 and (counts >= 2).mean() >= 0.5:
            out.append(a)
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
            raise LookalikeError(f"--sample must be at least 1, got {sample}")
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
    :func:`lookalike.training.splits.assign_splits`). Every ranking is re-ranked as ``rerank`` says
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
        notes = []
        for attrs in rels:
            for a in attrs:
                if a not in ix.attributes:
                    raise LookalikeError(f"index {ix.path}: no attribute {a!r} (it has: "
                                         f"{', '.join(ix.attributes)})")
        if len(ix) != len(query_ids) and sample is None:
            notes.append(f"{len(ix) - len(query_ids)} item(s) of this index are not in every "
                         "index and were not used as queries")
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
        r = ix.reranking(rerank)
        if r:
            notes.append(f"re-ranked: {r}")
        ev = evaluate_catalog(np.asarray(ix.embeddings)[gallery], items, rels, ks,
                              products=None if products is None else products[gallery],
                              query_rows=position[qrows], exclude_product=exclude_product,
                              ranker=_ranker(ix, r, items)).on_rows(gallery)
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
