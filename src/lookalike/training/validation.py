"""Validation during training: the metrics on held-out products (and outside photos), the
pretrained backbone's baseline, the score that picks the best epoch, and the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lookalike.api import Index
from lookalike.quality.metrics import evaluate_catalog
from lookalike.search.exact import rank
from lookalike.search.rerank import Ranker
from lookalike.training.config import TrainConfig
from lookalike.training.epochs import embed_all, embed_rows
from lookalike.training.network import DeepRanking
from lookalike.training.outside import Outside
from lookalike.training.triplets import TripletSet
from lookalike.training.views import Cache


def outside_precision(q: np.ndarray, gallery: np.ndarray, rows: np.ndarray,
                       out: Outside, k: int, ranker: Ranker = rank) -> float:
    """precision@k of outside validation photos (embeddings ``q``) among the catalogue rows
    ``rows`` (embeddings ``gallery``)."""
    from lookalike.quality.metrics import evaluate_queries

    masks = {lab: m[rows] for lab, m in out.relevant.items()}
    ev = evaluate_queries(q, [out.labels[i] for i in out.val], gallery, masks, [k], name="q",
                          ranker=ranker)
    return float(np.nanmean(ev.per_query[f"precision@{k}/q"]))


def metric_keys(cfg: TrainConfig, products: bool) -> list[str]:
    """The validation metrics the score adds up: precision@k per relevance, and finding the
    query's other product photos when products have several."""
    keys = [f"precision@{cfg.k}/{'+'.join(r)}" for r in cfg.relevances()]
    return keys + ([f"recall@{cfg.k}/product"] if products else [])


@dataclass
class Val:
    """Validation: the query rows and the gallery rows they are ranked in (the validation
    products; with --split-by photo, every product's training photos too)."""

    queries: np.ndarray
    gallery: np.ndarray
    triplets: TripletSet
    keys: list[str]
    outside: Outside | None = None
    outside_pretrained: np.ndarray | None = None  # the backbone's vectors of outside.val


def measure(emb: np.ndarray, ix: Index, val: Val, cfg: TrainConfig,
             outside_q: np.ndarray | None = None, ranker: Ranker = rank) -> dict[str, float]:
    """The metrics of ``val.keys`` for gallery embeddings ``emb`` (and the outside
    validation photos' embeddings ``outside_q``), ranked by ``ranker``."""
    position = np.full(len(ix), -1)
    position[val.gallery] = np.arange(len(val.gallery))
    ev = evaluate_catalog(emb, ix.items.iloc[val.gallery].reset_index(drop=True),
                          cfg.relevances(), ks=[cfg.k],
                          products=ix.items[cfg.product].to_numpy()[val.gallery],
                          query_rows=position[val.queries], ranker=ranker)
    out = {key: float(ev.metrics.get(key, float("nan"))) for key in val.keys}
    if val.outside is not None and outside_q is not None:
        out[val.outside.key] = outside_precision(outside_q, emb, val.gallery, val.outside,
                                                  cfg.k, ranker)
    return out


def validate(model: DeepRanking, cache: Cache, ix: Index, val: Val,
              cfg: TrainConfig) -> dict[str, float]:
    tune = cfg.finetune_stages
    emb = embed_all(model, cache, val.gallery, tune)
    position = np.full(len(ix), -1)
    position[val.gallery] = np.arange(len(val.gallery))
    t = val.triplets
    q, p, n = (emb[position[r]] for r in (t.query, t.positive, t.negative))
    aug = t.positive_type == 1
    if aug.any():
        with torch.no_grad():
            p[aug] = embed_rows(model, cache, t.positive[aug], tune,
                                 np.ones(int(aug.sum()), bool)).numpy()
    acc = float(((q * p).sum(1) > (q * n).sum(1)).mean()) if len(q) else float("nan")
    outside_q = None
    if val.outside is not None:
        model.eval()
        with torch.no_grad():
            outside_q = embed_rows(model, cache, val.outside.base + val.outside.val,
                                    tune).numpy()
    return {"val_triplet_accuracy": acc,
            **{f"val_{k}": v for k, v in measure(emb, ix, val, cfg, outside_q).items()}}


def score(entry: dict[str, float], keys: Sequence[str], prefix: str = "val_") -> float:
    """What early stopping watches: the validation metrics added up (a gain in colour must
    not be paid for in category)."""
    return float(sum(np.nan_to_num(entry[prefix + k]) for k in keys))


def baseline(model: DeepRanking, cache: Cache, ix: Index, val: Val, cfg: TrainConfig,
              log: Callable[[str], None]) -> dict[str, float]:
    """Epoch 0 of the history: the untrained head, and the pretrained backbone for reference."""
    entry = {"epoch": 0, "loss": float("nan"), "train_triplet_accuracy": float("nan"),
             **validate(model, cache, ix, val, cfg)}
    pre = measure(np.asarray(ix.embeddings, np.float32)[val.gallery], ix, val, cfg,
                   val.outside_pretrained)
    entry.update({f"pretrained_{k}": v for k, v in pre.items()})
    log("pretrained backbone on validation: " + ", ".join(f"{k} {v:.3f}" for k, v in pre.items()))
    return entry


def verdict(history: list[dict[str, float]], best_epoch: int, keys: Sequence[str]
             ) -> dict[str, Any]:
    """The best epoch against the pretrained backbone, on the same validation queries."""
    best = history[best_epoch]
    trained, pretrained = score(best, keys), score(history[0], keys, "pretrained_")
    return {"better": trained > pretrained, "score": trained, "pretrained_score": pretrained,
            "metrics": {k: {"trained": best["val_" + k], "pretrained": history[0]["pretrained_" + k]}
                        for k in keys}}
