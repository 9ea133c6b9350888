"""The category classifier fitted on a model's embedding (kept when it beats the category vote),
and ``train --classifier-only``, which fits it on an index's own vectors.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.api import Index
from lookalike.build import DEFAULT_RERANK
from lookalike.embedders import (
    TRAINED_ONNX,
)
from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import label_codes
from lookalike.search.classifier import CategoryHead, coded, fit_head
from lookalike.search.rerank import Rerank, reranked
from lookalike.training.config import TrainConfig, TrainSummary
from lookalike.training.export import model_meta, weights, write_meta
from lookalike.training.validation import Val, measure, score

#: the outside photos' weight in the classifier's loss: each is tried, validation chooses
OUTSIDE_WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def fit_classifier(ix: Index, cfg: TrainConfig, val: Val, train_rows: np.ndarray,
                    emb_of: Callable[[np.ndarray], np.ndarray], outside_q: np.ndarray | None,
                    log: Callable[[str], None]) -> tuple[CategoryHead, dict[str, Any]]:
    """The category classifier (lookalike.search.classifier) on the embedding ``emb_of`` gives item
    rows, fitted on the training items and the training outside photos (their vectors
    ``outside_q``: the training ones, then the validation ones), and measured on validation
    against the category vote: the same metrics as training's, each ranking the predicted
    category first."""
    assert cfg.category is not None
    out = val.outside
    items = ix.items
    n_fit = 0 if out is None else len(out.fit)
    fit_q = None if outside_q is None else outside_q[:n_fit]
    val_q = None if outside_q is None else outside_q[n_fit:]
    values = [] if out is None else [out.values.get(out.labels[i], ()) for i in out.fit]
    x = emb_of(train_rows)
    labels = items[cfg.category].astype("string").fillna("").to_numpy()[train_rows]
    known = set(labels.tolist())
    if out is not None and not any(known.intersection(v) for v in values):
        log(f"note: the outside photos' mapping names no {cfg.category} value of the training "
            "items; the classifier learns from the catalogue alone")
        out = None
        fit_q = val_q = None
    gallery = emb_of(val.gallery)
    g_items = items.iloc[val.gallery].reset_index(drop=True)
    best: tuple[float, float, CategoryHead, dict[str, float]] | None = None
    for w in OUTSIDE_WEIGHTS if out is not None else (1.0,):
        head = fit_head(cfg.category, x, labels, fit_q, values, outside_weight=w, seed=cfg.seed)
        m = measure(gallery, ix, val, cfg, val_q,
                     reranked(Rerank(classify=True), *coded(head, g_items, cfg.category)))
        s = score(m, val.keys, "")
        if best is None or s > best[0]:
            best = (s, w, head, m)
    assert best is not None
    best_score, weight, head, metrics = best
    voted = measure(gallery, ix, val, cfg, val_q,
                     reranked(DEFAULT_RERANK, label_codes(g_items, [cfg.category])))
    info = {"better_than_vote": best_score > score(voted, val.keys, ""), "outside_weight": weight,
            "metrics": {k: {"classify": metrics[k], "vote": voted[k]} for k in val.keys},
            "classes": len(head.classes)}
    log(f"category classifier ({len(head.classes)} {cfg.category} values"
        + (f", outside photos weighted {weight}" if out is not None else "")
        + ") on validation, ranking its category first vs the category vote: "
        + ", ".join(f"{k} {m['classify']:.3f} vs {m['vote']:.3f}"
                    for k, m in info["metrics"].items()))
    return head, info


def train_classifier_only(ix: Index, out: Path, cfg: TrainConfig, val: Val,
                           train_rows: np.ndarray, split_counts: dict[str, int], t_start: float,
                           log: Callable[[str], None]) -> TrainSummary:
    """``--classifier-only``: the index's embedding stays; the model folder holds it (its ONNX
    file) and the category classifier fitted on it. The verdict: the classifier against the
    category vote, on validation."""
    if cfg.category is None:
        raise LookalikeError("classifier_only= needs a category column (category=); this "
                             f"index has none among {', '.join(ix.attributes)}")
    if ix.spec.precision != "fp32":
        raise LookalikeError(f"classifier_only= needs an index embedded in fp32; {ix.path} is "
                             f"{ix.spec.precision}")
    t0 = time.perf_counter()
    vectors = np.asarray(ix.embeddings, np.float32)
    outside_q = None
    if val.outside is not None:  # embedded as searches embed photos: fit, views
        o = val.outside
        outside_q = np.stack([ix.embed(o.photos[i]) for i in np.concatenate([o.fit, o.val])])
    head, info = fit_classifier(ix, cfg, val, train_rows, lambda rows: vectors[rows],
                                 outside_q, log)
    t_fit = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / TRAINED_ONNX
    shutil.copyfile(ix.embedder.onnx_path, onnx_path)
    spec = replace(ix.spec, weights=weights(onnx_path), source=str(out.resolve()))
    head.save(out)
    verdict = {"better": info["better_than_vote"], "against": "category vote",
               "metrics": {k: {"trained": m["classify"], "pretrained": m["vote"]}
                           for k, m in info["metrics"].items()}}
    timings = {"train_s": t_fit, "total_s": time.perf_counter() - t_start}
    write_meta(out, model_meta(ix, cfg, spec, classifier=info, splits=split_counts,
                                 timings=timings, verdict=verdict))
    log(f"on validation the category classifier is "
        f"{'BETTER' if verdict['better'] else 'NOT better'} than the category vote")
    return TrainSummary(out, 0, 0, [], timings, verdict)
