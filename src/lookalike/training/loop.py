"""Train a Deep Ranking embedding on a catalogue's own metadata, on the CPU.

The backbone stays frozen: its features are the index's vectors, computed once by
``lookalike build``; the shallow branches read each photo subsampled 4×, decoded once in
background threads. Each epoch samples fresh triplets from the training products, minimises
the triplet hinge loss plus a classification term on the catalogue's category and colour (it
keeps the pretrained notion of "same kind of item" while the branches add colour), validates on
held-out products, checkpoints, and stops when validation stops improving. The best epoch is
exported to ONNX as an embedder that ``lookalike build --model FOLDER`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from lookalike.api import Index
from lookalike.build import DEFAULT_RERANK
from lookalike.embed.local import embed_images
from lookalike.embedders import (
    TRAINED_ONNX,
    TRAINED_SPEC,
    EmbedderSpec,
    create_embedder,
    export_module,
    onnx_session,
)
from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.catalog import ITEM_ID, PRODUCT_ID, label_codes
from lookalike.ingest.images import load_image, to_model_input
from lookalike.quality.metrics import evaluate_catalog
from lookalike.search.classifier import CategoryHead, coded, fit_head
from lookalike.search.exact import rank
from lookalike.search.rerank import Ranker, Rerank, reranked
from lookalike.store.folder import now
from lookalike.training.network import DeepRanking, subsample4, triplet_loss
from lookalike.training.splits import assign_splits, photo_splits
from lookalike.training.triplets import TripletSet, roles, sample_triplets, single_photo

CHECKPOINT = "checkpoint.pt"
CURVE = "training_curve.png"


@dataclass
class TrainConfig:
    """Everything that shapes a training run (stored in the checkpoint and in model.json)."""

    category: str | None = None  # None: the index's category column, else articleType if any
    color: str | None = None  # None: baseColour if the index has it
    product: str = PRODUCT_ID
    dim: int = 512
    gap: float = 0.2  # g in max(0, g + D(q,p) − D(q,n)), D squared Euclidean on unit vectors
    aux_weight: float = 1.0  # weight of the category + colour classification term
    lr: float = 1e-3
    epochs: int = 8
    triplets_per_epoch: int | None = None  # None: 25 per training item, 2,000 to 50,000
    batch_size: int = 256
    p_same_product: float | None = None  # None: 0.9 if most products have several photos, else 0
    p_in_class: float = 0.5
    val_triplets: int = 5_000
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    patience: int = 2
    k: int = 10  # validation precision@k
    keep: tuple[str, ...] = ()  # more columns the embedding must keep telling apart
    finetune_stages: int = 0  # 0: frozen backbone; n: also train its last n stages
    backbone_lr_scale: float = 0.1  # their learning rate relative to lr
    split_by: str = "product"  # or "photo": every product trains, some of its photos validate
    hard_negatives: int = 20  # no category: negatives among the nearest this many products
    # outside photos with labels (e.g. customers' photos) as anchors: positives are catalogue
    # items of the label's mapped values, negatives the others; split by who took them
    queries: str | None = None  # photos.csv (image path, label, group)
    mapping: str | None = None  # label → catalogue values (lookalike evaluate --mapping)
    query_images: str | None = None
    query_label_column: str = "label"
    query_group_column: str | None = None  # e.g. sender_id; None: every photo its own group
    query_test_fraction: float = 0.5  # groups held out for measuring (never read here)
    query_val_fraction: float = 0.25  # of the other groups: validation
    query_share: float = 0.25  # share of each epoch's triplets anchored on outside photos
    # camera-like views of the catalogue photos as queries (CAMERA_STEPS), this share of them
    camera: tuple[str, ...] = ()
    camera_share: float = 0.5
    # keep the index's embedding and fit only the category classifier (lookalike.search.classifier)
    classifier_only: bool = False

    def relevances(self) -> list[list[str]]:
        """What validation measures besides finding a product's other photos."""
        if self.category is None:
            return []
        return [[self.category]] + ([[self.category, self.color]] if self.color else [])


@dataclass
class TrainSummary:
    out: Path
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    timings: dict[str, float] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)  # trained vs pretrained, validation

    @property
    def better(self) -> bool:
        """True when the model beats the pretrained backbone on validation."""
        return bool(self.verdict.get("better"))


SPLIT_BY = ("product", "photo")
PER_ITEM = 25  # default triplets per epoch per training item
MIN_TRIPLETS, MAX_TRIPLETS = 2_000, 50_000


def resolve_roles(ix: Index, cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """``cfg`` with its roles taken from what the index has: a role left to its default and
    absent is left out with a note; one named and absent is an error."""
    have = set(ix.items.columns)
    for col, opt in ((cfg.product, "--product"), *((c, "--keep") for c in cfg.keep)):
        if col not in have:
            raise LookalikeError(f"column {col!r} ({opt}) is not in index {ix.path}; it has: "
                                 f"{', '.join(ix.attributes)}")
    category, color = roles(have, (ix.category, ix.color), cfg.category, cfg.color, log)
    unknown = [c for c in cfg.camera if c not in CAMERA_STEPS]
    if unknown:
        raise LookalikeError(f"unknown camera step(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(CAMERA_STEPS)}")
    if cfg.split_by not in SPLIT_BY:
        raise LookalikeError(f"unknown split {cfg.split_by!r}; choose one of "
                             f"{', '.join(SPLIT_BY)}")
    return replace(cfg, category=category, color=color)


# --------------------------------------------------------------------------- cached inputs

def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (70–100 % of each side), a horizontal flip half the time, and a colour
    jitter of ±20 % in brightness, contrast and saturation."""
    w, h = img.size
    cw, ch = (max(1, int(s * rng.uniform(0.7, 1.0))) for s in (w, h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32)
    gray = a.mean(axis=2, keepdims=True)
    a = gray + (a - gray) * rng.uniform(0.8, 1.2)  # saturation
    a = (a - a.mean()) * rng.uniform(0.8, 1.2) + a.mean() * rng.uniform(0.8, 1.2)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


CAMERA_STEPS = ("background", "scale", "rotate", "perspective", "light")


def _camera(img: Image.Image, rng: np.random.Generator, steps: Sequence[str]) -> Image.Image:
    """A catalogue photo made to look like a phone photo of the garment, by ``steps`` in
    CAMERA_STEPS order: on a bed-or-floor-like background (its mask from the plain shop
    backdrop), zoomed in, turned, seen at a slant, under other light."""
    if "background" in steps:
        img = _on_background(img, rng)
    w, h = img.size
    fill = tuple(int(v) for v in np.asarray(img)[[0, -1]].reshape(-1, 3).mean(0))
    if "scale" in steps:  # 50–100 % of the area, aspect 3:4 to 4:3
        area, aspect = rng.uniform(0.5, 1.0), np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
        cw = int(min(w, np.sqrt(area * w * h * aspect)))
        ch = int(min(h, np.sqrt(area * w * h / aspect)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
        w, h = img.size
    if "rotate" in steps:
        img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, fillcolor=fill)
    if "perspective" in steps:  # each corner moves up to 12 % of the side
        d = rng.uniform(-0.12, 0.12, 8) * np.array([w, h] * 4)
        corners = np.array([0, 0, 0, h, w, h, w, 0], float) + d  # PIL: UL, LL, LR, UR
        img = img.transform((w, h), Image.QUAD, tuple(corners), Image.BILINEAR, fillcolor=fill)
    if "light" in steps:  # white balance, exposure and contrast of another lamp
        a = np.asarray(img, np.float32) / 255.0
        a = a * rng.uniform(0.85, 1.15, 3) * rng.uniform(0.7, 1.15)
        a = np.clip(a, 0, 1) ** rng.uniform(0.8, 1.25)
        img = Image.fromarray((a * 255).astype(np.uint8))
    return img


def _on_background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The garment (the photo minus its plain backdrop) on a textured colour, like a bed, a
    floor or a table; unchanged when the backdrop is not plain or nothing stands out."""
    import cv2

    from lookalike.ingest.preprocess import backdrop, garment_mask

    a = np.asarray(img.convert("RGB"))
    seen = backdrop(a)
    if seen[1] < 0.7:
        return img
    mask, _ = garment_mask(a, seen=seen)
    if mask is None:
        return img
    h, w = a.shape[:2]
    m = cv2.GaussianBlur(cv2.resize(mask.astype(np.float32), (w, h)), (0, 0), 1.5)[..., None]
    base = rng.uniform(40, 230, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    tilt = (xx * rng.uniform(-40, 40) + yy * rng.uniform(-40, 40))[..., None]
    grain = cv2.GaussianBlur(rng.normal(0, 18, (h, w)).astype(np.float32), (0, 0),
                             float(rng.uniform(0.5, 4)))[..., None]
    bg = np.clip(base + tilt + grain, 0, 255)
    return Image.fromarray((a * m + bg * (1 - m)).astype(np.uint8))


def _load_pixels(ix: Index, rows: Sequence[int], size: int, pool: ThreadPoolExecutor,
                 augment_seed: int | None = None,
                 photos: Sequence[str | os.PathLike] | None = None,
                 augment: Callable[[Image.Image, np.random.Generator], Image.Image] = _augment
                 ) -> np.ndarray:
    """uint8 (len(rows), size, size, 3), decoded by ``pool``'s threads: the items' photos, or
    ``photos[i]`` for ``rows[i]`` (outside photos), preprocessed as the index's."""
    ids = ix.items["item_id"].astype(str).to_numpy()
    where = dict(zip(rows, photos)) if photos is not None else None

    def one(row: int) -> np.ndarray:
        name = f"photo {where[row]}" if where is not None else f"item {ids[row]}"
        try:
            img = ix.preprocess(load_image(where[row] if where is not None
                                           else ix.image_path(ids[row]), draft_size=size))
        except ImageError as e:
            raise LookalikeError(f"{name}: its photo can no longer be read: {e}") from None
        if augment_seed is not None:
            img = augment(img, np.random.default_rng([augment_seed, int(row)]))
        return to_model_input(img, size)

    return np.stack(list(pool.map(one, rows))) if len(rows) else \
        np.zeros((0, size, size, 3), np.uint8)


@dataclass
class _Cache:
    """What each training step reads, one slot per cached row: the backbone's unit features
    (frozen backbone) or the activations before the tuned stages, and the photo at 1/4."""

    slot: np.ndarray  # index row → slot (-1: not cached)
    inputs: torch.Tensor  # (slots, D) features, or (slots, C, h, w) float16 activations
    small: torch.Tensor  # (slots, 3, S/4, S/4) float16
    aug_slot: np.ndarray | None = None  # the same for one augmented view of some rows
    aug_inputs: torch.Tensor | None = None
    aug_small: torch.Tensor | None = None

    def get(self, rows: np.ndarray, augmented: np.ndarray | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.from_numpy(self.slot[rows])
        x, small = self.inputs[s], self.small[s]
        if augmented is not None and augmented.any():
            if self.aug_slot is None or (self.aug_slot[rows[augmented]] < 0).any():
                raise LookalikeError("an augmented positive has no cached augmented view")
            a = np.flatnonzero(augmented)
            sa = torch.from_numpy(self.aug_slot[rows[a]])
            x, small = x.clone(), small.clone()
            x[a], small[a] = self.aug_inputs[sa], self.aug_small[sa]
        return x.float(), small.float()

    def extend(self, rows: np.ndarray, inputs: torch.Tensor, small: torch.Tensor,
               size: int) -> None:
        """Cache ``rows`` (past the catalogue: outside photos, camera views) with their
        inputs; the row space grows to ``size``."""
        slot = np.full(size, -1, np.int64)
        slot[:len(self.slot)] = self.slot
        slot[rows] = len(self.inputs) + np.arange(len(rows))
        self.slot = slot
        self.inputs = torch.cat([self.inputs, inputs.to(self.inputs.dtype)])
        self.small = torch.cat([self.small, small.to(self.small.dtype)])


class _Front(nn.Module):
    """uint8 pixels → the backbone's activations before its last ``tune`` stages."""

    def __init__(self, model: DeepRanking, tune: int) -> None:
        super().__init__()
        self.model = model
        self.tune = tune

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.front(self.model.normalise(pixels), self.tune)


def front_runner(model: DeepRanking, tune: int, folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The frozen front as an ONNX Runtime session (5–8× eager PyTorch on a CPU)."""
    path = export_module(_Front(model, tune), model.backbone_spec.input_size,
                         folder / "front.onnx")
    session = onnx_session(path)
    return lambda px: session.run(None, {"pixels": np.ascontiguousarray(px)})[0]


def _cache_views(ix: Index, model: DeepRanking, rows: np.ndarray, tune: int, progress: bool,
                 augment_seed: int | None = None,
                 photos: Sequence[str | os.PathLike] | None = None,
                 augment: Callable[[Image.Image, np.random.Generator], Image.Image] = _augment
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``rows``' photos in background threads while the previous chunk is turned into
    branch inputs and (when tuning, or for augmented views) backbone inputs."""
    spec = ix.spec
    chunk = 256
    chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    inputs, smalls = [], []
    desc = "augmented views" if augment_seed is not None else "photos"
    # the backbone's features: the index's vectors, except for augmented views (embedded
    # here) and an int8 index (its vectors come from the int8 model, but the trained model
    # exports the fp32 backbone: the features it learns from must be fp32's)
    int8_index = ix.spec.precision == "int8"
    embedder = None
    if tune == 0 and (augment_seed is not None or int8_index or photos is not None):
        embedder = create_embedder(ix.spec.name) if int8_index else ix.embedder
    with tempfile.TemporaryDirectory() as tmp, \
            ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool, \
            ThreadPoolExecutor(max_workers=1) as loader, \
            tqdm(total=len(rows), unit="img", desc=desc, disable=not progress) as bar:
        front = front_runner(model, tune, Path(tmp)) if tune and len(rows) else None
        at = {int(r): p for r, p in zip(rows, photos)} if photos is not None else None

        def load(chunk: np.ndarray) -> Any:
            return loader.submit(_load_pixels, ix, chunk, spec.input_size, pool, augment_seed,
                                 None if at is None else [at[int(r)] for r in chunk], augment)

        pending = load(chunks[0]) if chunks else None
        for i in range(len(chunks)):
            px = pending.result()
            if i + 1 < len(chunks):  # decode the next chunk while this one is computed
                pending = load(chunks[i + 1])
            t = torch.from_numpy(px)
            smalls.append(subsample4(t, spec).half())
            if front is not None:
                inputs.append(torch.from_numpy(front(px)).half())
            elif embedder is not None:
                inputs.append(torch.from_numpy(embedder(px)))
            bar.update(len(px))
    small = torch.cat(smalls) if smalls else torch.zeros(0, 3, 1, 1, dtype=torch.float16)
    if tune or embedder is not None:
        return (torch.cat(inputs) if inputs else torch.zeros(0)), small
    feats = torch.from_numpy(np.array(ix.embeddings[rows], dtype=np.float32))
    return feats, small


def _build_cache(ix: Index, model: DeepRanking, rows: np.ndarray, aug_rows: np.ndarray,
                 tune: int, progress: bool) -> _Cache:
    slot = np.full(len(ix), -1, np.int64)
    slot[rows] = np.arange(len(rows))
    inputs, small = _cache_views(ix, model, rows, tune, progress)
    cache = _Cache(slot, inputs, small)
    if len(aug_rows):
        cache.aug_slot = np.full(len(ix), -1, np.int64)
        cache.aug_slot[aug_rows] = np.arange(len(aug_rows))
        cache.aug_inputs, cache.aug_small = _cache_views(ix, model, aug_rows, tune, progress,
                                                         augment_seed=0)
    return cache


# --------------------------------------------------------------------------- outside photos

@dataclass
class _Outside:
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


def _read_outside(ix: Index, cfg: TrainConfig, log: Callable[[str], None]) -> _Outside:
    from lookalike.quality.runs import read_label_mapping, read_query_set
    from lookalike.training.splits import group_splits

    if cfg.mapping is None:
        raise LookalikeError("training on outside photos (--queries) needs --mapping")
    mapping = read_label_mapping(cfg.mapping)
    relevant = mapping.masks(ix.items)
    group = cfg.query_group_column
    if group is None:
        log("note: no --query-group-column: every outside photo is its own group (photos of "
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
    return _Outside(len(ix), [qs.image_file(i) for i in range(len(items))],
                    items[cfg.query_label_column].astype(str).tolist(), relevant,
                    mapping.labels, fit, val, f"precision@{cfg.k}/{mapping.name}")


def _cache_outside(ix: Index, model: DeepRanking, cache: _Cache, out: _Outside, val: _Val,
                   tune: int, progress: bool) -> None:
    """Add the training and validation outside photos to ``cache`` (rows ``out.base + j``),
    and the backbone's own vectors of the validation ones to ``val`` (the baseline)."""
    pos = np.concatenate([out.fit, out.val])
    photos = [out.photos[i] for i in pos]
    inputs, small = _cache_views(ix, model, out.base + pos, tune, progress, photos=photos)
    cache.extend(out.base + pos, inputs, small, out.base + len(out.photos))
    if tune == 0:  # the cached inputs are the backbone's unit vectors already
        val.outside_pretrained = inputs[len(out.fit):].float().numpy()
    else:
        emb = embed_images(ix.embedder, [out.photos[i] for i in out.val],
                           preprocess=ix.preprocess)
        val.outside_pretrained = emb.embeddings


def _cache_camera(ix: Index, model: DeepRanking, cache: _Cache, rows: np.ndarray, base: int,
                  cfg: TrainConfig, progress: bool) -> None:
    """One camera-like view (``cfg.camera`` steps, seeded per row) of each of ``rows``' photos,
    cached at rows ``base + row``."""
    inputs, small = _cache_views(ix, model, rows, cfg.finetune_stages, progress,
                                 augment_seed=cfg.seed + 2,
                                 augment=lambda img, rng: _camera(img, rng, cfg.camera))
    cache.extend(base + rows, inputs, small, base + len(ix))


def _outside_triplets(out: _Outside, train_rows: np.ndarray, n: int, seed: int) -> TripletSet:
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


def _joined(a: TripletSet, b: TripletSet) -> TripletSet:
    return TripletSet(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                        ("query", "positive", "negative", "positive_type", "negative_type")),
                      requested=a.requested + b.requested, skipped=a.skipped)


def _outside_precision(q: np.ndarray, gallery: np.ndarray, rows: np.ndarray,
                       out: _Outside, k: int, ranker: Ranker = rank) -> float:
    """precision@k of outside validation photos (embeddings ``q``) among the catalogue rows
    ``rows`` (embeddings ``gallery``)."""
    from lookalike.quality.metrics import evaluate_queries

    masks = {lab: m[rows] for lab, m in out.relevant.items()}
    ev = evaluate_queries(q, [out.labels[i] for i in out.val], gallery, masks, [k], name="q",
                          ranker=ranker)
    return float(np.nanmean(ev.per_query[f"precision@{k}/q"]))


# --------------------------------------------------------------------------- training

class _Labels(nn.Module):
    """A linear classifier on the embedding per labelled column (training only, not
    exported): category, colour and any ``keep`` columns."""

    def __init__(self, dim: int, items: pd.DataFrame, columns: Sequence[str | None],
                 alias: np.ndarray | None = None) -> None:
        super().__init__()
        self.columns = list(dict.fromkeys(c for c in columns if c is not None))
        codes = [pd.factorize(items[c].astype("string").fillna("").to_numpy())[0]
                 for c in self.columns]
        self.targets = torch.from_numpy(np.stack(codes, axis=1).astype(np.int64)
                                        if codes else np.zeros((len(items), 0), np.int64))
        self.heads = nn.ModuleList(nn.Linear(dim, int(c.max()) + 1) for c in codes)
        # rows past the catalogue → the item row whose labels they take, or -1
        self.alias = np.zeros(0, np.int64) if alias is None else alias

    def loss(self, z: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Cross-entropy per column; a row past the catalogue takes the label of the item
        ``alias`` names (a camera view: its photo's item), or none (-1: an outside photo)."""
        rows = np.where(rows < len(self.targets), rows,
                        self.alias[np.maximum(rows - len(self.targets), 0)]
                        if len(self.alias) else -1)
        known = torch.from_numpy(rows >= 0)
        t = self.targets[torch.from_numpy(np.maximum(rows, 0))]
        return sum(F.cross_entropy(head(z[known]), t[known][:, j])
                   for j, head in enumerate(self.heads))


def _embed_rows(model: DeepRanking, cache: _Cache, rows: np.ndarray, tune: int,
                augmented: np.ndarray | None = None) -> torch.Tensor:
    x, small = cache.get(rows, augmented)
    return model.embed_from(x, small, tune) if tune else model.embed(x, small)


def _set_train(model: DeepRanking, tune: int) -> None:
    """Training mode for the head and the tuned stages; batch norms keep their statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _embed_all(model: DeepRanking, cache: _Cache, rows: np.ndarray, tune: int) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = [_embed_rows(model, cache, rows[i:i + 512], tune).numpy()
               for i in range(0, len(rows), 512)]
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def _metric_keys(cfg: TrainConfig, products: bool) -> list[str]:
    """The validation metrics the score adds up: precision@k per relevance, and finding the
    query's other product photos when products have several."""
    keys = [f"precision@{cfg.k}/{'+'.join(r)}" for r in cfg.relevances()]
    return keys + ([f"recall@{cfg.k}/product"] if products else [])


@dataclass
class _Val:
    """Validation: the query rows and the gallery rows they are ranked in (the validation
    products; with --split-by photo, every product's training photos too)."""

    queries: np.ndarray
    gallery: np.ndarray
    triplets: TripletSet
    keys: list[str]
    outside: _Outside | None = None
    outside_pretrained: np.ndarray | None = None  # the backbone's vectors of outside.val


def _measure(emb: np.ndarray, ix: Index, val: _Val, cfg: TrainConfig,
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
        out[val.outside.key] = _outside_precision(outside_q, emb, val.gallery, val.outside,
                                                  cfg.k, ranker)
    return out


def _validate(model: DeepRanking, cache: _Cache, ix: Index, val: _Val,
              cfg: TrainConfig) -> dict[str, float]:
    tune = cfg.finetune_stages
    emb = _embed_all(model, cache, val.gallery, tune)
    position = np.full(len(ix), -1)
    position[val.gallery] = np.arange(len(val.gallery))
    t = val.triplets
    q, p, n = (emb[position[r]] for r in (t.query, t.positive, t.negative))
    aug = t.positive_type == 1
    if aug.any():
        with torch.no_grad():
            p[aug] = _embed_rows(model, cache, t.positive[aug], tune,
                                 np.ones(int(aug.sum()), bool)).numpy()
    acc = float(((q * p).sum(1) > (q * n).sum(1)).mean()) if len(q) else float("nan")
    outside_q = None
    if val.outside is not None:
        model.eval()
        with torch.no_grad():
            outside_q = _embed_rows(model, cache, val.outside.base + val.outside.val,
                                    tune).numpy()
    return {"val_triplet_accuracy": acc,
            **{f"val_{k}": v for k, v in _measure(emb, ix, val, cfg, outside_q).items()}}


def _score(entry: dict[str, float], keys: Sequence[str], prefix: str = "val_") -> float:
    """What early stopping watches: the validation metrics added up (a gain in colour must
    not be paid for in category)."""
    return float(sum(np.nan_to_num(entry[prefix + k]) for k in keys))


def _baseline(model: DeepRanking, cache: _Cache, ix: Index, val: _Val, cfg: TrainConfig,
              log: Callable[[str], None]) -> dict[str, float]:
    """Epoch 0 of the history: the untrained head, and the pretrained backbone for reference."""
    entry = {"epoch": 0, "loss": float("nan"), "train_triplet_accuracy": float("nan"),
             **_validate(model, cache, ix, val, cfg)}
    pre = _measure(np.asarray(ix.embeddings, np.float32)[val.gallery], ix, val, cfg,
                   val.outside_pretrained)
    entry.update({f"pretrained_{k}": v for k, v in pre.items()})
    log("pretrained backbone on validation: " + ", ".join(f"{k} {v:.3f}" for k, v in pre.items()))
    return entry


def _verdict(history: list[dict[str, float]], best_epoch: int, keys: Sequence[str]
             ) -> dict[str, Any]:
    """The best epoch against the pretrained backbone, on the same validation queries."""
    best = history[best_epoch]
    trained, pretrained = _score(best, keys), _score(history[0], keys, "pretrained_")
    return {"better": trained > pretrained, "score": trained, "pretrained_score": pretrained,
            "metrics": {k: {"trained": best["val_" + k], "pretrained": history[0]["pretrained_" + k]}
                        for k in keys}}


def _mine(model: DeepRanking, cache: _Cache, ix: Index, rows: np.ndarray, cfg: TrainConfig
          ) -> np.ndarray:
    """Per item row: the rows of the ``cfg.hard_negatives`` nearest other products among
    ``rows`` in the current embedding (-1 elsewhere)."""
    emb = _embed_all(model, cache, rows, cfg.finetune_stages)
    prod = pd.factorize(ix.items[cfg.product].astype("string").fillna("").to_numpy()[rows])[0]
    extra = int(np.bincount(prod).max())
    found, _ = rank(emb, emb, min(len(rows), cfg.hard_negatives + extra))
    other = (found >= 0) & (prod[np.maximum(found, 0)] != prod[:, None])
    out = np.full((len(ix), cfg.hard_negatives), -1, np.int64)
    for i in range(len(rows)):
        near = found[i][other[i]][:cfg.hard_negatives]
        out[rows[i], :len(near)] = rows[near]
    return out


def _run_epoch(model: DeepRanking, labels: _Labels, opt: torch.optim.Optimizer, cache: _Cache,
               ts: TripletSet, cfg: TrainConfig, epoch: int, progress: bool
               ) -> tuple[float, float]:
    """One pass over ``ts`` in shuffled batches; returns mean loss and triplet accuracy."""
    tune = cfg.finetune_stages
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(ts))
    _set_train(model, tune)
    total = correct = seen = 0.0
    with tqdm(total=len(ts), unit="triplet", desc=f"epoch {epoch + 1}/{cfg.epochs}",
              disable=not progress) as bar:
        for b in range(0, len(ts), cfg.batch_size):
            i = order[b:b + cfg.batch_size]
            q, p, n = ts.query[i], ts.positive[i], ts.negative[i]
            zq = _embed_rows(model, cache, q, tune)
            zp = _embed_rows(model, cache, p, tune, ts.positive_type[i] == 1)
            zn = _embed_rows(model, cache, n, tune)
            loss = triplet_loss(zq, zp, zn, cfg.gap)
            if cfg.aux_weight:
                z = torch.cat([zq, zp, zn])
                loss = loss + cfg.aux_weight * labels.loss(z, np.concatenate([q, p, n]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                correct += float((((zq - zp) ** 2).sum(1) < ((zq - zn) ** 2).sum(1)).sum())
            total += float(loss.detach()) * len(i)
            seen += len(i)
            bar.update(len(i))
            bar.set_postfix(loss=f"{total / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total / max(seen, 1), correct / max(seen, 1)


def _make_model(backbone: str, cfg: TrainConfig
                ) -> tuple[DeepRanking, list[nn.Parameter], list[nn.Parameter]]:
    """The network, its head's parameters, and the tuned backbone stages' parameters (the rest
    of the backbone frozen; with no tuning, no backbone at all)."""
    tune = cfg.finetune_stages
    torch.manual_seed(cfg.seed)
    model = DeepRanking(backbone, cfg.dim, with_backbone=tune > 0)
    head = [p for name, p in model.named_parameters() if not name.startswith("features.")]
    tuned: list[nn.Parameter] = []
    if tune:
        for p in model.features.parameters():
            p.requires_grad_(False)
        try:
            tuned = [p for m in model.tail_modules(tune) for p in m.parameters()]
        except ValueError as e:
            raise LookalikeError(f"--finetune-stages: {e}") from None
        for p in tuned:
            p.requires_grad_(True)
        model.eval()
    return model, head, tuned


# --------------------------------------------------------------------------- category classifier

#: the outside photos' weight in the classifier's loss: each is tried, validation chooses
OUTSIDE_WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def _fit_classifier(ix: Index, cfg: TrainConfig, val: _Val, train_rows: np.ndarray,
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
        m = _measure(gallery, ix, val, cfg, val_q,
                     reranked(Rerank(classify=True), *coded(head, g_items, cfg.category)))
        score = _score(m, val.keys, "")
        if best is None or score > best[0]:
            best = (score, w, head, m)
    assert best is not None
    score, weight, head, metrics = best
    voted = _measure(gallery, ix, val, cfg, val_q,
                     reranked(DEFAULT_RERANK, label_codes(g_items, [cfg.category])))
    info = {"better_than_vote": score > _score(voted, val.keys, ""), "outside_weight": weight,
            "metrics": {k: {"classify": metrics[k], "vote": voted[k]} for k in val.keys},
            "classes": len(head.classes)}
    log(f"category classifier ({len(head.classes)} {cfg.category} values"
        + (f", outside photos weighted {weight}" if out is not None else "")
        + ") on validation, ranking its category first vs the category vote: "
        + ", ".join(f"{k} {m['classify']:.3f} vs {m['vote']:.3f}"
                    for k, m in info["metrics"].items()))
    return head, info


def _train_classifier_only(ix: Index, out: Path, cfg: TrainConfig, val: _Val,
                           train_rows: np.ndarray, split_counts: dict[str, int], t_start: float,
                           log: Callable[[str], None]) -> TrainSummary:
    """``--classifier-only``: the index's embedding stays; the model folder holds it (its ONNX
    file) and the category classifier fitted on it. The verdict: the classifier against the
    category vote, on validation."""
    if cfg.category is None:
        raise LookalikeError("--classifier-only needs a category column (--category); this "
                             f"index has none among {', '.join(ix.attributes)}")
    if ix.spec.precision != "fp32":
        raise LookalikeError(f"--classifier-only needs an index embedded in fp32; {ix.path} is "
                             f"{ix.spec.precision}")
    t0 = time.perf_counter()
    vectors = np.asarray(ix.embeddings, np.float32)
    outside_q = None
    if val.outside is not None:  # embedded as searches embed photos: fit, views
        o = val.outside
        outside_q = np.stack([ix.embed(o.photos[i]) for i in np.concatenate([o.fit, o.val])])
    head, info = _fit_classifier(ix, cfg, val, train_rows, lambda rows: vectors[rows],
                                 outside_q, log)
    t_fit = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / TRAINED_ONNX
    shutil.copyfile(ix.embedder.onnx_path, onnx_path)
    spec = replace(ix.spec, weights=_weights(onnx_path), source=str(out.resolve()))
    head.save(out)
    verdict = {"better": info["better_than_vote"], "against": "category vote",
               "metrics": {k: {"trained": m["classify"], "pretrained": m["vote"]}
                           for k, m in info["metrics"].items()}}
    timings = {"train_s": t_fit, "total_s": time.perf_counter() - t_start}
    _write_meta(out, _model_meta(ix, cfg, spec, classifier=info, splits=split_counts,
                                 timings=timings, verdict=verdict))
    log(f"on validation the category classifier is "
        f"{'BETTER' if verdict['better'] else 'NOT better'} than the category vote")
    return TrainSummary(out, 0, 0, [], timings, verdict)


def train(index: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None,
          *, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainSummary:
    """Train on INDEX's training products, validate on its validation products, write the
    model folder ``out`` (model.onnx, model.json, checkpoint.pt, training_curve.png)."""
    cfg = config or TrainConfig()
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise LookalikeError(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = TrainConfig(**state["config"])
        index = state["index"]
    elif out.exists() and any(out.iterdir()):
        raise LookalikeError(f"{out} is not empty; use --resume to continue its training or "
                             "choose another folder")
    t_start = time.perf_counter()
    ix = Index.open(index)
    if ix.spec.family in ("color-histogram", "deep-ranking"):
        raise LookalikeError(f"index {ix.path} was built with {ix.model!r}; training needs an "
                             "index of a pretrained CNN backbone (e.g. efficientnet-lite0)")
    items = ix.items
    cfg = resolve_roles(ix, cfg, log)
    if cfg.split_by == "photo":
        split = photo_splits(items[ITEM_ID].to_numpy(), items[cfg.product].to_numpy(),
                             test=cfg.test_fraction, val=cfg.val_fraction, seed=cfg.split_seed)
    else:
        split = assign_splits(items[cfg.product].to_numpy(), test=cfg.test_fraction,
                              val=cfg.val_fraction, seed=cfg.split_seed)
    train_rows = np.flatnonzero(split == "train")
    val_rows = np.flatnonzero(split == "val")
    if len(train_rows) < 2 or len(val_rows) < 2:
        raise LookalikeError(f"too few {cfg.split_by}s to split: {len(train_rows)} training and "
                             f"{len(val_rows)} validation items")
    photos = items[cfg.product].iloc[train_rows].map(
        items[cfg.product].iloc[train_rows].value_counts())
    p_same = cfg.p_same_product
    if p_same is None:
        p_same = 0.9 if (photos > 1).mean() >= 0.5 or cfg.category is None else 0.0
    per_epoch = cfg.triplets_per_epoch or int(np.clip(PER_ITEM * len(train_rows), MIN_TRIPLETS,
                                                      MAX_TRIPLETS))
    # --split-by photo: held-out photos of known products are ranked among every training
    # and validation photo; by product: validation products among themselves
    gallery = np.sort(np.concatenate([train_rows, val_rows])) if cfg.split_by == "photo" \
        else val_rows
    several = items[cfg.product].iloc[gallery].value_counts().max() > 1
    outside = _read_outside(ix, cfg, log) if cfg.queries else None
    keys = _metric_keys(cfg, bool(several)) + ([outside.key] if outside else [])
    if not keys:
        raise LookalikeError("nothing to validate on: no category column, and no product has "
                             "several photos among the validation items")
    val = _Val(val_rows, gallery,
               sample_triplets(items, cfg.val_triplets, category=cfg.category, color=cfg.color,
                               product=cfg.product, p_same_product=p_same,
                               p_in_class=cfg.p_in_class, rows=val_rows,
                               seed=cfg.seed + 10_000), keys, outside)
    split_counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    if cfg.classifier_only:
        if resume:
            raise LookalikeError("--resume continues a network's training; a classifier alone "
                                 "is fitted in seconds: run it again")
        return _train_classifier_only(ix, out, cfg, val, train_rows, split_counts, t_start, log)
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
    tune = cfg.finetune_stages
    model, head, tuned = _make_model(ix.model, cfg)
    t0 = time.perf_counter()
    cache = _build_cache(ix, model, np.unique(np.concatenate([train_rows, gallery])), aug_rows,
                         tune, progress)
    if outside is not None:
        _cache_outside(ix, model, cache, outside, val, tune, progress)
    camera_base = len(cache.slot)  # camera views: rows camera_base + item row
    if cfg.camera:
        _cache_camera(ix, model, cache, train_rows, camera_base, cfg, progress)
    t_cache = time.perf_counter() - t0
    labels = _Labels(cfg.dim, items, [cfg.category, cfg.color, *cfg.keep], alias=np.concatenate(
        [np.full(camera_base - len(ix), -1, np.int64),
         np.arange(len(ix)) if cfg.camera else np.zeros(0, np.int64)]))
    groups = [{"params": [*head, *labels.parameters()], "lr": cfg.lr}]
    if tuned:
        groups.append({"params": tuned, "lr": cfg.lr * cfg.backbone_lr_scale})
    opt = torch.optim.Adam(groups)
    history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, start_epoch = -1.0, None, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        labels.load_state_dict(state["labels"])
        opt.load_state_dict(state["optimizer"])
        history, best_score = state["history"], state["best_score"]
        best_state, best_epoch = state["best_model"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        log(f"resuming after epoch {state['epoch'] + 1} (best so far: epoch {best_epoch})")
    if not history:
        history.append(_baseline(model, cache, ix, val, cfg, log))
    out.mkdir(parents=True, exist_ok=True)
    epochs_since_best = len(history) - 1 - best_epoch if best_epoch else 0
    t_train = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        mined = _mine(model, cache, ix, train_rows, cfg) if cfg.category is None else None
        ts = sample_triplets(items, per_epoch, category=cfg.category, color=cfg.color,
                             product=cfg.product, p_same_product=p_same,
                             p_in_class=cfg.p_in_class, rows=train_rows, seed=cfg.seed + epoch,
                             hard_negatives=mined)
        if cfg.camera:  # a share of the queries seen as a phone would see them
            swap = np.random.default_rng([cfg.seed, epoch, 3]).random(len(ts)) < cfg.camera_share
            ts.query = np.where(swap, camera_base + ts.query, ts.query)
        if outside is not None:
            ts = _joined(ts, _outside_triplets(outside, train_rows,
                                               max(1, round(per_epoch * cfg.query_share)),
                                               cfg.seed + epoch))
        loss, accuracy = _run_epoch(model, labels, opt, cache, ts, cfg, epoch, progress)
        entry = {"epoch": epoch + 1, "loss": loss, "train_triplet_accuracy": accuracy,
                 **_validate(model, cache, ix, val, cfg),
                 "seconds": time.perf_counter() - t_train}
        history.append(entry)
        score = _score(entry, keys)
        # with outside photos, an epoch worse on them than the pretrained backbone never wins
        eligible = outside is None or \
            entry["val_" + outside.key] >= history[0]["pretrained_" + outside.key]
        if score > best_score and eligible:
            best_score, best_epoch, epochs_since_best = score, epoch + 1, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            epochs_since_best += 1
        log(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, train triplet accuracy "
            f"{entry['train_triplet_accuracy']:.3f}, val triplet accuracy "
            f"{entry['val_triplet_accuracy']:.3f}, "
            + ", ".join(f"val {k} {entry['val_' + k]:.3f}" for k in keys)
            + ("  (best)" if epochs_since_best == 0 else ""))
        _save_checkpoint(ckpt_path, model, labels, opt, epoch, history, best_score, best_state,
                         best_epoch, cfg, ix)
        if epochs_since_best >= cfg.patience:
            log(f"validation has not improved for {cfg.patience} epochs: stopping")
            break
    if best_state is None and len(history) > 1:  # the model holds the last epoch's weights
        log("no epoch beat the pretrained backbone on the outside validation photos: the last "
            "epoch is written, and it is not better")
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        best_epoch = len(history) - 1
    if best_state is None:
        raise LookalikeError("no epoch was trained (epochs=0?)")
    t_fit = time.perf_counter() - t_train
    t0 = time.perf_counter()
    export_trained(out, ix, best_state, cfg, history, best_epoch, split_counts)
    plot_curve(history, keys, out / CURVE)
    extra: dict[str, Any] = {}
    if cfg.category is not None:  # the classifier on the model written, kept if it beats the vote
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            outside_q = None if outside is None else _embed_rows(
                model, cache, outside.base + np.concatenate([outside.fit, outside.val]),
                tune).numpy()
        head, extra["classifier"] = _fit_classifier(
            ix, cfg, val, train_rows, lambda rows: _embed_all(model, cache, rows, tune),
            outside_q, log)
        if extra["classifier"]["better_than_vote"]:
            head.save(out)
        else:
            log("the classifier is not better than the vote on validation: not kept (indexes "
                "of this model re-rank by the vote)")
    timings = {"cache_s": t_cache, "train_s": t_fit, "export_s": time.perf_counter() - t0,
               "total_s": time.perf_counter() - t_start}
    verdict = _verdict(history, best_epoch, keys)
    log(f"on validation the trained model is {'BETTER' if verdict['better'] else 'NOT better'} "
        f"than the pretrained backbone: "
        + ", ".join(f"{k} {m['trained']:.3f} vs {m['pretrained']:.3f}"
                    for k, m in verdict["metrics"].items()))
    _update_meta(out, {"timings": timings, "verdict": verdict, **extra})
    return TrainSummary(out, len(history) - 1, best_epoch, history, timings, verdict)


def _save_checkpoint(path: Path, model: DeepRanking, labels: _Labels, opt: torch.optim.Optimizer,
                     epoch: int, history: list[dict[str, float]], best_score: float,
                     best_state: dict[str, torch.Tensor] | None, best_epoch: int,
                     cfg: TrainConfig, ix: Index) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"model": model.state_dict(), "labels": labels.state_dict(),
                "optimizer": opt.state_dict(), "epoch": epoch, "history": history,
                "best_score": best_score, "best_model": best_state, "best_epoch": best_epoch,
                "config": asdict(cfg), "index": str(ix.path)}, tmp)
    os.replace(tmp, path)


def export_trained(out: Path, ix: Index, state: dict[str, torch.Tensor], cfg: TrainConfig,
                   history: list[dict[str, float]], best_epoch: int,
                   split_counts: dict[str, int]) -> EmbedderSpec:
    """Put the backbone back under the trained head and export the whole network to ONNX."""
    full = DeepRanking(ix.model, cfg.dim)
    missing = full.load_state_dict(state, strict=False)
    if missing.unexpected_keys or any(not k.startswith("features.") for k in missing.missing_keys):
        raise LookalikeError(f"checkpoint does not fit the network: {missing}")
    onnx_path = export_module(full, ix.spec.input_size, out / TRAINED_ONNX)
    spec = EmbedderSpec(f"deep-ranking-{ix.model}", "deep-ranking", ix.spec.input_size, cfg.dim,
                        ix.spec.mean, ix.spec.std, weights=_weights(onnx_path),
                        source=str(out.resolve()))
    _write_meta(out, _model_meta(ix, cfg, spec, best_epoch=best_epoch, history=history,
                                 splits=split_counts))
    return spec


def _weights(onnx_path: Path) -> str:
    """A model folder's weights as its spec names them: the file and its digest."""
    return f"{onnx_path.name} sha256:{hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]}"


def _model_meta(ix: Index, cfg: TrainConfig, spec: EmbedderSpec, **more: Any) -> dict[str, Any]:
    """model.json: the model's spec, what it was trained from and how, and ``more``."""
    return {"embedder": spec.to_dict(), "backbone": ix.spec.to_dict(), "config": asdict(cfg),
            "index": str(ix.path), "preprocess": ix.preprocess.to_dict(),
            "catalog": _catalog_meta(ix, cfg), "trained": now(), **more}


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write model.json atomically."""
    tmp = out / f".{TRAINED_SPEC}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=float))
    os.replace(tmp, out / TRAINED_SPEC)


def _catalog_meta(ix: Index, cfg: TrainConfig) -> dict[str, Any]:
    """The training catalogue's columns as ``build --model`` takes them: the index's, with
    the category and colour roles training used."""
    cat = ix.manifest["catalog"]
    columns = {**(cat.get("columns") or {}), "category": cfg.category, "color": cfg.color}
    return {"columns": columns, "attributes": cat.get("attributes")}


def _update_meta(out: Path, extra: dict[str, Any]) -> None:
    _write_meta(out, {**json.loads((out / TRAINED_SPEC).read_text()), **extra})


def plot_curve(history: list[dict[str, float]], keys: Sequence[str], out: Path) -> Path:
    """Loss and validation metrics per epoch (epoch 0: before training), with the pretrained
    backbone's as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs[1:], [h["loss"] for h in history[1:]], marker="o", label="training loss")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.grid(alpha=0.3)
    a.legend()
    for key in keys:
        line = b.plot(epochs, [h["val_" + key] for h in history], marker="o", label=key)[0]
        pre = history[0].get("pretrained_" + key)
        if pre is not None:
            b.axhline(pre, ls="--", color=line.get_color(), alpha=0.6,
                      label=f"{key}, pretrained backbone")
    b.plot(epochs, [h["val_triplet_accuracy"] for h in history], marker=".", color="gray",
           label="triplet accuracy")
    b.set_xlabel("epoch (0 = untrained head)")
    b.set_ylabel("validation")
    b.set_ylim(0, 1)
    b.grid(alpha=0.3)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
