"""Every search-side quality lever of issue 16, alone and combined, on the same queries.

Levers: the photo's fit to a square (squash / crop / pad), query views averaged (test-time
augmentation: flip, zoom), the category vote at several depths, α-query expansion, both, and
database-side augmentation (DBA: each catalogue vector replaced by the weighted mean of its
nearest neighbours, Arandjelović & Zisserman 2012; computed here, not offered by lookalike,
because it lost). Each row reports:

- street photos → catalogue (the camera use case): precision@10 and top-1, on all 670 mapped
  photos and on each side of the split by person (``group_splits(sender_id)``, the split
  ``lookalike evaluate --query-group-column sender_id --query-split`` selects), so that a lever
  that helps one group of people only shows up;
- catalogue → catalogue: articleType precision@1 and @10 and articleType+baseColour
  precision@10, on all items and on the test split (products hashed as ``lookalike train``
  splits them);
- the cost: ms per query photo through ``Index.search`` (median of ``--timed`` photos) and ms
  per similar-by-id through ``Index.similar``, the best of 3 interleaved rounds; ratios
  against the first row. (Fit rows time the index's own fit: their cost is the same.)

With ``--classifier-index`` (repeatable: an index built from the same catalogue with a model
from ``lookalike train --classifier-only``, whose embedding is the backbone's), a row per
classifier: the category it names ranked first (``--rerank classify``). Its catalogue columns
on all items include the items it was fitted on; the test-split columns do not, nor does the
test side of the street photos (the train side does, when it was fitted with them).

Usage: .venv/bin/python bench/levers.py [--index bench/out/quality/efficientnet-lite0]
[--classifier-index bench/out/train/clf-street-index ...]
(the index: ``lookalike build ../shared/datasets/myntra-9k/catalog.csv --out ...``).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike import Index
from lookalike.ingest.catalog import label_codes
from lookalike.ingest.images import load_model_views
from lookalike.quality.inputs import read_label_mapping
from lookalike.quality.metrics import evaluate_catalog, evaluate_queries
from lookalike.quality.splits import assign_splits, group_splits
from lookalike.search.classifier import coded
from lookalike.search.exact import rank
from lookalike.search.rerank import Rerank, reranked

DATASETS = Path(os.environ.get("LOOKALIKE_DATASETS", Path(__file__).resolve().parents[2]
                               / "shared" / "datasets"))
STREET = DATASETS / "street-photos"
MAPPING = Path(__file__).resolve().parents[1] / "docs" / "street-photos-mapping.yaml"
RELS = [["articleType"], ["articleType", "baseColour"]]

ROWS = [  # label, fit, views, re-ranking, DBA
    ("squash (before issue 16)", "squash", "", "none", False),
    ("pad", "pad", "", "none", False),
    ("crop", "crop", "", "none", False),
    ("crop + views flip", "crop", "flip", "none", False),
    ("crop + views zoom", "crop", "zoom", "none", False),
    ("crop + views flip,zoom", "crop", "flip,zoom", "none", False),
    ("crop + expand=1", "crop", "", "expand=1", False),
    ("crop + expand=3", "crop", "", "expand=3", False),
    ("crop + expand=10", "crop", "", "expand=10", False),
    ("crop + DBA (2 neighbours, α=3)", "crop", "", "none", True),
    ("squash + vote=10", "squash", "", "vote=10", False),
    ("crop + vote=5", "crop", "", "vote=5", False),
    ("crop + vote=10 (default)", "crop", "", "vote=10", False),
    ("crop + vote=20", "crop", "", "vote=20", False),
    ("crop + vote=10,expand=1", "crop", "", "vote=10,expand=1", False),
    ("crop + flip + vote=10", "crop", "flip", "vote=10", False),
]


def dba(g: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    rows, scores = rank(g, g, n)  # each item's n nearest, itself first
    w = np.maximum(scores, 0) ** alpha
    out = np.einsum("nm,nmd->nd", w, g[rows])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def street_vectors(ix: Index, paths: list[Path], fit: str, views: str,
                   cache: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """The street photos embedded as Index.embed does, with this fit and these views."""
    if (fit, views) not in cache:
        size = ix.spec.input_size
        out = []
        for p in paths:
            e = ix.embedder(load_model_views(p, size, [v for v in views.split(",") if v],
                                             fit=fit))
            m = e.mean(axis=0)
            out.append(m / np.linalg.norm(m))
        cache[fit, views] = np.asarray(out, np.float32)
    return cache[fit, views]


ROUNDS = 3  # timing rounds over all rows, interleaved; each row's best median counts


def ms_per_query(fn, args: list) -> float:
    fn(args[0])  # warm
    t = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def timings(ix: Index, photos: list[Path], items: list[str], rows: list[tuple]
            ) -> dict[str, tuple[float, float]]:
    """ms per photo search and per similar-by-id of each row (not DBA), in ``ROUNDS``
    interleaved rounds so that a slow spell of the machine hits every row alike."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(ROUNDS):
        for label, _fit, views, how, use_dba, *clf in rows:
            if use_dba:
                continue
            ix = clf[0] if clf else ix
            r = Rerank.parse(how)
            photo = ms_per_query(partial(ix.search, k=10, rerank=r, views=views or "none"),
                                 photos)
            similar = ms_per_query(partial(ix.similar, k=10, rerank=r), items)
            old = best.get(label, (float("inf"), float("inf")))
            best[label] = (min(old[0], photo), min(old[1], similar))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="bench/out/quality/efficientnet-lite0")
    ap.add_argument("--timed", type=int, default=40, help="photos and items timed per row")
    ap.add_argument("--classifier-index", action="append", default=[],
                    help="an index of the same catalogue whose model has a category classifier")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the rows whose label contains TEXT (repeatable); the first "
                         "row, the ratios' base, always runs")
    args = ap.parse_args()
    ix = Index.open(args.index)
    rows = [r for i, r in enumerate(ROWS)
            if i == 0 or not args.only or any(t in r[0] for t in args.only)]
    for path in args.classifier_index:
        other = Index.open(path)
        if other.classifier is None or not np.allclose(other.embeddings, ix.embeddings,
                                                      atol=1e-4):
            raise SystemExit(f"{path}: no classifier, or not the embedding of {args.index}")
        rows.append((f"crop + classify ({Path(path).name})", "crop", "", "classify", False, other))
    if ix.preprocess.steps:
        raise SystemExit("build the index without --preprocess steps")
    g = np.ascontiguousarray(ix.embeddings, np.float32)
    items = ix.items
    cats = label_codes(items, ["articleType"])
    photos = pd.read_csv(STREET / "photos.csv")
    mapping = read_label_mapping(MAPPING)
    masks = mapping.masks(items)
    paths = [STREET / p for p in photos["image_path"]]
    group = (group_splits(photos["sender_id"].to_numpy()) == "test").astype(int)
    test = np.flatnonzero(assign_splits(items["product_id"].to_numpy()) == "test")
    cache: dict[tuple[str, str], np.ndarray] = {}
    g_dba = dba(g)
    rng = np.random.default_rng(0)
    timed_photos = [paths[i] for i in rng.choice(len(paths), args.timed, replace=False)]
    timed_items = items["item_id"].iloc[rng.choice(len(items), args.timed, replace=False)].tolist()
    print(f"index {ix.path}: {len(ix)} items; {len(paths)} street photos "
          f"({np.bincount(group).tolist()} on the train and test side of the split by "
          f"sender); test split {len(test)} items")
    head = ("| lever | street P@10 | street top-1 | train side P@10 | test side P@10 | myntra type "
            "P@1 | type P@10 | type+colour P@10 | test-split type P@10 | test type+colour P@10 "
            "| ms/photo search | ms/similar |")
    cost = timings(ix, timed_photos, timed_items, rows)
    base_ms = cost[ROWS[0][0]]
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, fit, views, how, use_dba, *clf in rows:
        r = Rerank.parse(how)
        gal = g_dba if use_dba else g
        head = clf[0].classifier if clf else None
        ranker = reranked(r, *coded(head, items, "articleType")) if head else \
            reranked(r, cats) if r else rank
        q = street_vectors(ix, paths, fit, views, cache)
        ev = evaluate_queries(q, photos["label"].tolist(), gal, masks, (1, 10),
                              name="street", ranker=ranker)
        pq = ev.per_query
        p10 = pq["precision@10/street"]
        grp = [float(np.nanmean(p10[group == k])) for k in (0, 1)]
        cat = evaluate_catalog(gal, items, RELS, (1, 10), ranker=ranker).metrics
        sub = items.iloc[test].reset_index(drop=True)
        sub_ranker = reranked(r, *coded(head, sub, "articleType")) if head else \
            reranked(r, cats[test]) if r else rank
        tst = evaluate_catalog(gal[test], sub, RELS, (10,), ranker=sub_ranker).metrics
        ms_photo, ms_sim = cost.get(label, (float("nan"), float("nan")))
        print(f"| {label} | {np.nanmean(p10):.3f} | {np.nanmean(pq['accuracy@1/street']):.3f} "
              f"| {grp[0]:.3f} | {grp[1]:.3f} | {cat['precision@1/articleType']:.3f} "
              f"| {cat['precision@10/articleType']:.3f} "
              f"| {cat['precision@10/articleType+baseColour']:.3f} "
              f"| {tst['precision@10/articleType']:.3f} "
              f"| {tst['precision@10/articleType+baseColour']:.3f} "
              f"| {ms_photo:.1f} ({ms_photo / base_ms[0]:.2f}×) "
              f"| {ms_sim:.2f} ({ms_sim / base_ms[1]:.2f}×) |", flush=True)


if __name__ == "__main__":
    main()
