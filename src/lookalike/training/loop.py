"""Train a Deep Ranking embedding on a catalogue's own metadata, on the CPU.

By default the backbone stays frozen: its features are the index's vectors, computed once by
``lookalike build``; with ``finetune_stages`` = n its last n stages train too, on cached
activations of the stages before them. The shallow branches read each photo subsampled 4×,
decoded once in background threads (lookalike.training.views). Each epoch samples fresh triplets from the training products, minimises
the triplet hinge loss plus a classification term on the catalogue's category and colour (it
keeps the pretrained notion of "same kind of item" while the branches add colour), validates on
held-out products, checkpoints, and stops when validation stops improving. The best epoch is
exported to ONNX as an embedder that ``lookalike build --model FOLDER`` accepts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lookalike.api import Index
from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import ITEM_ID
from lookalike.quality.splits import assign_splits, photo_splits
from lookalike.training.classifier_fit import fit_classifier, train_classifier_only
from lookalike.training.config import (
    MAX_TRIPLETS,
    MIN_TRIPLETS,
    PER_ITEM,
    TrainConfig,
    TrainSummary,
    resolve_roles,
)
from lookalike.training.epochs import Labels, embed_all, embed_rows, make_model, mine, run_epoch
from lookalike.training.export import (
    CHECKPOINT,
    CURVE,
    export_trained,
    plot_curve,
    save_checkpoint,
    update_meta,
)
from lookalike.training.network import DeepRanking
from lookalike.training.outside import (
    Outside,
    cache_outside,
    joined,
    outside_triplets,
    read_outside,
)
from lookalike.training.triplets import TripletSet, sample_triplets, single_photo
from lookalike.training.validation import Val, baseline, metric_keys, score, validate, verdict
from lookalike.training.views import Cache, build_cache, cache_camera

Log = Callable[[str], None]


@dataclass
class Plan:
    """What a run trains and validates on, decided from the index and the configuration."""

    split: np.ndarray  # "train" / "val" / "test" per index row
    train_rows: np.ndarray
    val: Val
    p_same: float  # the share of same-product positives
    per_epoch: int  # triplets per epoch
    outside: Outside | None
    aug_rows: np.ndarray  # rows whose same-product positive is an augmented view

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in ("train", "val", "test")}


@dataclass
class Run:
    """A network being trained: its inputs, optimiser and the epochs so far."""

    model: DeepRanking
    labels: Labels
    opt: torch.optim.Optimizer
    cache: Cache
    camera_base: int  # camera views are cache rows camera_base + item row
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    start_epoch: int = 0


def train(index: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None,
          *, resume: bool = False, progress: bool = True, log: Log = print) -> TrainSummary:
    """Train on INDEX's training products, validate on its validation products, write the
    model folder ``out`` (model.onnx, model.json, checkpoint.pt, training_curve.png).

    ``resume=True`` continues the run checkpointed in ``out``, on its own index and
    configuration: ``index`` must be that index and ``config`` left out."""
    t_start = time.perf_counter()
    out = Path(out)
    state = _checkpoint(out, index, config) if resume else _empty(out)
    cfg = TrainConfig(**state["config"]) if state else (config or TrainConfig())
    ix = Index.open(state["index"] if state else index)
    if ix.spec.family in ("color-histogram", "deep-ranking"):
        raise LookalikeError(f"index {ix.path} was built with {ix.model!r}; training needs an "
                             "index of a pretrained CNN backbone (e.g. efficientnet-lite0)")
    cfg = resolve_roles(ix, cfg, log)
    plan = plan_run(ix, cfg, log)
    if cfg.classifier_only:
        return train_classifier_only(ix, out, cfg, plan.val, plan.train_rows, plan.counts,
                                     t_start, log)
    t0 = time.perf_counter()
    run = _start(ix, cfg, plan, progress)
    t_cache = time.perf_counter() - t0
    if state:
        _restore(run, state, log)
    if not run.history:
        run.history.append(baseline(run.model, run.cache, ix, plan.val, cfg, log))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _fit(run, ix, cfg, plan, out / CHECKPOINT, progress, log)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    extra = _write(run, ix, cfg, plan, out, log)
    timings = {"cache_s": t_cache, "train_s": t_fit, "export_s": time.perf_counter() - t0,
               "total_s": time.perf_counter() - t_start}
    said = verdict(run.history, run.best_epoch, plan.val.keys)
    log(f"on validation the trained model is {'BETTER' if said['better'] else 'NOT better'} "
        f"than the pretrained backbone: "
        + ", ".join(f"{k} {m['trained']:.3f} vs {m['pretrained']:.3f}"
                    for k, m in said["metrics"].items()))
    update_meta(out, {"timings": timings, "verdict": said, **extra})
    return TrainSummary(out, len(run.history) - 1, run.best_epoch, run.history, timings, said)


def _empty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise LookalikeError(f"{out} is not empty; resume its training or choose another "
                             "folder")


def _checkpoint(out: Path, index: str | os.PathLike | None, config: TrainConfig | None
                ) -> dict[str, Any]:
    """The checkpoint a resumed run continues; refused when other settings are given."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise LookalikeError(f"nothing to resume: no checkpoint at {path}")
    if config is not None:  # (refused before the checkpoint is loaded)
        raise LookalikeError("a resumed training keeps the configuration it was started with "
                             f"(in {path}); give no configuration")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if index is not None and Path(index).resolve() != Path(state["index"]).resolve():
        raise LookalikeError(f"the training in {out} is on index {state['index']}, not {index}")
    if TrainConfig(**state["config"]).classifier_only:
        raise LookalikeError("a classifier alone is fitted in seconds: run it again instead of "
                             "resuming")
    return state


def plan_run(ix: Index, cfg: TrainConfig, log: Log) -> Plan:
    """Split the index, choose the triplet mix and what validation measures."""
    items = ix.items
    if cfg.split_by == "photo":
        split = photo_splits(items[ITEM_ID].to_numpy(), items[cfg.product].to_numpy(),
                             test=cfg.test_fraction, val=cfg.val_fraction, seed=cfg.split_seed)
    else:
        split = assign_splits(items[cfg.product].to_numpy(), test=cfg.test_fraction,
                              val=cfg.val_fraction, seed=cfg.split_seed)
    train_rows, val_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train_rows) < 2 or len(val_rows) < 2:
        raise LookalikeError(f"too few {cfg.split_by}s to split: {len(train_rows)} training and "
                             f"{len(val_rows)} validation items")
    product = items[cfg.product]
    photos = product.iloc[train_rows].map(product.iloc[train_rows].value_counts())
    p_same = cfg.p_same_product
    if p_same is None:
        p_same = 0.9 if (photos > 1).mean() >= 0.5 or cfg.category is None else 0.0
    per_epoch = cfg.triplets_per_epoch or int(np.clip(PER_ITEM * len(train_rows), MIN_TRIPLETS,
                                                      MAX_TRIPLETS))
    # split by photo: held-out photos of known products are ranked among every training
    # and validation photo; by product: validation products among themselves
    gallery = np.sort(np.concatenate([train_rows, val_rows])) if cfg.split_by == "photo" \
        else val_rows
    several = product.iloc[gallery].value_counts().max() > 1
    outside = read_outside(ix, cfg, log) if cfg.queries else None
    keys = metric_keys(cfg, bool(several)) + ([outside.key] if outside else [])
    if not keys:
        raise LookalikeError("nothing to validate on: no category column, and no product has "
                             "several photos among the validation items")
    val = Val(val_rows, gallery,
              sample_triplets(items, cfg.val_triplets, category=cfg.category, color=cfg.color,
                              product=cfg.product, p_same_product=p_same,
                              p_in_class=cfg.p_in_class, rows=val_rows,
                              seed=cfg.seed + 10_000), keys, outside)
    aug_rows = np.zeros(0, np.int64)
    if p_same > 0:  # the rows whose same-product positive will be an augmented view
        for rows in (train_rows, val_rows):
            alone = single_photo(items, rows, cfg.product, cfg.category, cfg.color)
            aug_rows = np.concatenate([aug_rows, rows[alone]])
    roles = ", ".join(f"{r} {c!r}" for r, c in (("category", cfg.category),
                                                ("colour", cfg.color)) if c) or "products only"
    log(f"training on {len(train_rows)} items, validating on {len(val_rows)} (split by "
        f"{cfg.split_by}); {int((split == 'test').sum())} test items left unseen; roles: "
        f"{roles}; p_same_product={p_same}; {per_epoch} triplets per epoch")
    return Plan(split, train_rows, val, p_same, per_epoch, outside, aug_rows)


def _start(ix: Index, cfg: TrainConfig, plan: Plan, progress: bool) -> Run:
    """The network, its cached inputs and its optimiser."""
    tune = cfg.finetune_stages
    model, head, tuned = make_model(ix.model, cfg)
    rows = np.unique(np.concatenate([plan.train_rows, plan.val.gallery]))
    cache = build_cache(ix, model, rows, plan.aug_rows, tune, progress)
    if plan.outside is not None:
        plan.val.outside_pretrained = cache_outside(ix, model, cache, plan.outside, tune,
                                                    progress)
    camera_base = len(cache.slot)
    if cfg.camera:
        cache_camera(ix, model, cache, plan.train_rows, camera_base, cfg, progress)
    labels = Labels(cfg.dim, ix.items, [cfg.category, cfg.color, *cfg.keep],
                    alias=np.concatenate([np.full(camera_base - len(ix), -1, np.int64),
                                          np.arange(len(ix)) if cfg.camera
                                          else np.zeros(0, np.int64)]))
    groups = [{"params": [*head, *labels.parameters()], "lr": cfg.lr}]
    if tuned:
        groups.append({"params": tuned, "lr": cfg.lr * cfg.backbone_lr_scale})
    return Run(model, labels, torch.optim.Adam(groups), cache, camera_base)


def _restore(run: Run, state: dict[str, Any], log: Log) -> None:
    run.model.load_state_dict(state["model"])
    run.labels.load_state_dict(state["labels"])
    run.opt.load_state_dict(state["optimizer"])
    run.history, run.best_score = state["history"], state["best_score"]
    run.best_state, run.best_epoch = state["best_model"], state["best_epoch"]
    run.start_epoch = state["epoch"] + 1
    log(f"resuming after epoch {state['epoch'] + 1} (best so far: epoch {run.best_epoch})")


def _triplets(run: Run, ix: Index, cfg: TrainConfig, plan: Plan, epoch: int) -> TripletSet:
    """An epoch's fresh triplets: sampled from the metadata (with mined negatives when there
    is no category), some queries as camera views, some anchored on outside photos."""
    mined = mine(run.model, run.cache, ix, plan.train_rows, cfg) if cfg.category is None \
        else None
    ts = sample_triplets(ix.items, plan.per_epoch, category=cfg.category, color=cfg.color,
                         product=cfg.product, p_same_product=plan.p_same,
                         p_in_class=cfg.p_in_class, rows=plan.train_rows,
                         seed=cfg.seed + epoch, hard_negatives=mined)
    if cfg.camera:  # a share of the queries seen as a phone would see them
        swap = np.random.default_rng([cfg.seed, epoch, 3]).random(len(ts)) < cfg.camera_share
        ts.query = np.where(swap, run.camera_base + ts.query, ts.query)
    if plan.outside is not None:
        n = max(1, round(plan.per_epoch * cfg.query_share))
        ts = joined(ts, outside_triplets(plan.outside, plan.train_rows, n, cfg.seed + epoch))
    return ts


def _fit(run: Run, ix: Index, cfg: TrainConfig, plan: Plan, checkpoint: Path,
         progress: bool, log: Log) -> None:
    """Train epoch after epoch, keeping the best, until validation stops improving."""
    keys, outside, history = plan.val.keys, plan.outside, run.history
    since_best = len(history) - 1 - run.best_epoch if run.best_epoch else 0
    t0 = time.perf_counter()
    for epoch in range(run.start_epoch, cfg.epochs):
        ts = _triplets(run, ix, cfg, plan, epoch)
        loss, accuracy = run_epoch(run.model, run.labels, run.opt, run.cache, ts, cfg, epoch,
                                   progress)
        entry = {"epoch": epoch + 1, "loss": loss, "train_triplet_accuracy": accuracy,
                 **validate(run.model, run.cache, ix, plan.val, cfg),
                 "seconds": time.perf_counter() - t0}
        history.append(entry)
        epoch_score = score(entry, keys)
        # with outside photos, an epoch worse on them than the pretrained backbone never wins
        eligible = outside is None or \
            entry["val_" + outside.key] >= history[0]["pretrained_" + outside.key]
        if epoch_score > run.best_score and eligible:
            run.best_score, run.best_epoch, since_best = epoch_score, epoch + 1, 0
            run.best_state = {k: v.clone() for k, v in run.model.state_dict().items()}
        else:
            since_best += 1
        log(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, train triplet accuracy "
            f"{entry['train_triplet_accuracy']:.3f}, val triplet accuracy "
            f"{entry['val_triplet_accuracy']:.3f}, "
            + ", ".join(f"val {k} {entry['val_' + k]:.3f}" for k in keys)
            + ("  (best)" if since_best == 0 else ""))
        save_checkpoint(checkpoint, run.model, run.labels, run.opt, epoch, history,
                        run.best_score, run.best_state, run.best_epoch, cfg, ix)
        if since_best >= cfg.patience:
            log(f"validation has not improved for {cfg.patience} epochs: stopping")
            break


def _write(run: Run, ix: Index, cfg: TrainConfig, plan: Plan, out: Path, log: Log
           ) -> dict[str, Any]:
    """Export the best epoch, its curve, and the classifier on it when it beats the vote;
    returns what model.json adds about the classifier."""
    if run.best_state is None and len(run.history) > 1:  # the model holds the last epoch
        log("no epoch beat the pretrained backbone on the outside validation photos: the last "
            "epoch is written, and it is not better")
        run.best_state = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.best_epoch = len(run.history) - 1
    if run.best_state is None:
        raise LookalikeError("no epoch was trained (epochs=0?)")
    export_trained(out, ix, run.best_state, cfg, run.history, run.best_epoch, plan.counts)
    plot_curve(run.history, plan.val.keys, out / CURVE)
    if cfg.category is None:
        return {}
    model, cache, tune, outside = run.model, run.cache, cfg.finetune_stages, plan.outside
    model.load_state_dict(run.best_state)
    model.eval()
    with torch.no_grad():
        outside_q = None if outside is None else embed_rows(
            model, cache, outside.base + np.concatenate([outside.fit, outside.val]),
            tune).numpy()
    head, about = fit_classifier(ix, cfg, plan.val, plan.train_rows,
                                 lambda rows: embed_all(model, cache, rows, tune), outside_q, log)
    if about["better_than_vote"]:
        head.save(out)
    else:
        log("the classifier is not better than the vote on validation: not kept (indexes "
            "of this model re-rank by the vote)")
    return {"classifier": about}
