"""Labelled outside photos (e.g. customers' phone photos) as training anchors, split by the
person who took them (``query_group_column``): the held-out groups are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.api import Index
from lookalike.embed.local import embed_images
from lookalike.errors import LookalikeError
from lookalike.training.config import TrainConfig
from lookalike.training.network import DeepRanking
from lookalike.training.triplets import TripletSet
from lookalike.training.views import Cache, cache_views


@dataclass
class Outside:
    """Labelled outside photos (e.g. customers' photos) as training anchors: cache rows
    ``base + j`` (after the catalogue's), the training and validation ones by group; the
    held-out groups are not read at all."""

    base: int
    photos: list[Path | str]
    labels: list[str]
    relevant: dict[str, np.ndarray]  # label → catalogue items that count as a match
    values: dict[str, tuple[str, ...]]  # label → the category values that count
    fit: np.ndarray  # positions in ``photos`` trained on
    val: np.ndarray  # positions validated on
    key: str  # the validation metric, precision@k/query:<attribute>


def read_outside(ix: Index, cfg: TrainConfig, log: Callable[[str], None]) -> Outside:
    from lookalike.quality.inputs import read_label_mapping, read_query_set
    from lookalike.quality.splits import group_splits

    if cfg.mapping is None:
        raise LookalikeError("training on outside photos (queries=) needs their label mapping= "
                             "too")
    mapping = read_label_mapping(cfg.mapping)
    relevant = mapping.masks(ix.items)
    group = cfg.query_group_column
    if group is None:
        log("note: no query_group_column=: every outside photo is its own group (photos of "
            "one person may then be both trained on and measured)")
    qs = read_query_set(cfg.queries, images=cfg.query_images,
                        label_column=cfg.query_label_column, group_column=group)
    items = qs.items
    groups = items[group].astype(str).to_numpy() if group else items["item_id"].to_numpy()
    side = group_splits(groups, test=cfg.query_test_fraction, seed=cfg.split_seed)
    inner = group_splits(groups, test=cfg.query_val_fraction, seed=cfg.split_seed + 1)
    usable = np.array([i not in qs.missing and str(lab) in relevant
                       and relevant[str(lab)].any()
                       for i, lab in enumerate(items[cfg.query_label_column])], bool)
    fit = np.flatnonzero(usable & (side == "train") & (inner == "train"))
    val = np.flatnonzero(usable & (side == "train") & (inner == "test"))
    if len(fit) == 0 or len(val) == 0:
        raise LookalikeError(f"outside photos: {len(fit)} to train on and {len(val)} to "
                             "validate on after the split by group; give more photos or groups")
    log(f"outside photos: {len(fit)} trained on, {len(val)} validating, "
        f"{int((side == 'test').sum())} of the held-out groups never read "
        f"({cfg.query_group_column or 'photo'} split, test share {cfg.query_test_fraction})")
    return Outside(len(ix), [qs.image_file(i) for i in range(len(items))],
                    items[cfg.query_label_column].astype(str).tolist(), relevant,
                    mapping.labels, fit, val, f"precision@{cfg.k}/{mapping.name}")


def cache_outside(ix: Index, model: DeepRanking, cache: Cache, out: Outside, tune: int,
                  progress: bool) -> np.ndarray:
    """Add the training and validation outside photos to ``cache`` (rows ``out.base + j``);
    returns the backbone's own vectors of the validation ones (the baseline)."""
    pos = np.concatenate([out.fit, out.val])
    photos = [out.photos[i] for i in pos]
    inputs, small = cache_views(ix, model, out.base + pos, tune, progress, photos=photos)
    cache.extend(out.base + pos, inputs, small, out.base + len(out.photos))
    if tune == 0:  # the cached inputs are the backbone's unit vectors already
        return inputs[len(out.fit):].float().numpy()
    else:
        emb = embed_images(ix.embedder, [out.photos[i] for i in out.val],
                           preprocess=ix.preprocess)
        return emb.embeddings


def outside_triplets(out: Outside, train_rows: np.ndarray, n: int, seed: int) -> TripletSet:
    """``n`` triplets anchored on the training outside photos: a catalogue item of the
    photo's mapped values as the positive, one of other values as the negative."""
    rng = np.random.default_rng([seed, 7])
    anchors = out.fit[rng.integers(0, len(out.fit), n)]
    anchor_labels = np.asarray(out.labels, dtype=object)[anchors]
    pos = np.empty(n, np.int64)
    neg = np.empty(n, np.int64)
    for lab in sorted(set(anchor_labels)):  # in a fixed order: the draws stay seeded
        mine = anchor_labels == lab
        good = train_rows[out.relevant[lab][train_rows]]
        bad = train_rows[~out.relevant[lab][train_rows]]
        if not len(good) or not len(bad):
            raise LookalikeError(f"outside label {lab!r}: no training item counts as a match, "
                                 "or every one does")
        pos[mine] = good[rng.integers(0, len(good), int(mine.sum()))]
        neg[mine] = bad[rng.integers(0, len(bad), int(mine.sum()))]
    return TripletSet(out.base + anchors, pos, neg, np.full(n, 2, np.int8),
                      np.ones(n, np.int8), requested=n)


def joined(a: TripletSet, b: TripletSet) -> TripletSet:
    return TripletSet(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                        ("query", "positive", "negative", "positive_type", "negative_type")),
                      requested=a.requested + b.requested, skipped=a.skipped)
