"""The photos a training run learns from, decoded once and cached: each item's backbone input
(the index's vectors with a frozen backbone, the activations before the tuned stages when
fine-tuning) and its photo at 1/4 for the shallow branches; augmented and camera-like views.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lookalike.api import Index
from lookalike.embedders import (
    create_embedder,
    export_module,
    onnx_session,
)
from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.images import load_image, to_model_input
from lookalike.progress import progress_bar
from lookalike.training.config import TrainConfig
from lookalike.training.network import DeepRanking, subsample4


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
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


def camera(img: Image.Image, rng: np.random.Generator, steps: Sequence[str]) -> Image.Image:
    """A catalogue photo made to look like a phone photo of the garment, by ``steps`` in
    CAMERA_STEPS order: on a bed-or-floor-like background (its mask from the plain shop
    backdrop), zoomed in, turned, seen at a slant, under other light."""
    if "background" in steps:
        img = on_background(img, rng)
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


def on_background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
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


def load_pixels(ix: Index, rows: Sequence[int], size: int, pool: ThreadPoolExecutor,
                 augment_seed: int | None = None,
                 photos: Sequence[str | os.PathLike] | None = None,
                 augment: Callable[[Image.Image, np.random.Generator], Image.Image] = augment
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
class Cache:
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


class Front(nn.Module):
    """uint8 pixels → the backbone's activations before its last ``tune`` stages."""

    def __init__(self, model: DeepRanking, tune: int) -> None:
        super().__init__()
        self.model = model
        self.tune = tune

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.front(self.model.normalise(pixels), self.tune)


def front_runner(model: DeepRanking, tune: int, folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The frozen front as an ONNX Runtime session (5–8× eager PyTorch on a CPU)."""
    path = export_module(Front(model, tune), model.backbone_spec.input_size,
                         folder / "front.onnx")
    session = onnx_session(path)
    return lambda px: session.run(None, {"pixels": np.ascontiguousarray(px)})[0]


def cache_views(ix: Index, model: DeepRanking, rows: np.ndarray, tune: int, progress: bool,
                 augment_seed: int | None = None,
                 photos: Sequence[str | os.PathLike] | None = None,
                 augment: Callable[[Image.Image, np.random.Generator], Image.Image] = augment
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
            progress_bar(len(rows), unit="img", desc=desc, show=progress) as bar:
        front = front_runner(model, tune, Path(tmp)) if tune and len(rows) else None
        at = {int(r): p for r, p in zip(rows, photos)} if photos is not None else None

        def load(chunk: np.ndarray) -> Any:
            return loader.submit(load_pixels, ix, chunk, spec.input_size, pool, augment_seed,
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


def build_cache(ix: Index, model: DeepRanking, rows: np.ndarray, aug_rows: np.ndarray,
                 tune: int, progress: bool) -> Cache:
    slot = np.full(len(ix), -1, np.int64)
    slot[rows] = np.arange(len(rows))
    inputs, small = cache_views(ix, model, rows, tune, progress)
    cache = Cache(slot, inputs, small)
    if len(aug_rows):
        cache.aug_slot = np.full(len(ix), -1, np.int64)
        cache.aug_slot[aug_rows] = np.arange(len(aug_rows))
        cache.aug_inputs, cache.aug_small = cache_views(ix, model, aug_rows, tune, progress,
                                                         augment_seed=0)
    return cache


def cache_camera(ix: Index, model: DeepRanking, cache: Cache, rows: np.ndarray, base: int,
                  cfg: TrainConfig, progress: bool) -> None:
    """One camera-like view (``cfg.camera`` steps, seeded per row) of each of ``rows``' photos,
    cached at rows ``base + row``."""
    inputs, small = cache_views(ix, model, rows, cfg.finetune_stages, progress,
                                 augment_seed=cfg.seed + 2,
                                 augment=lambda img, rng: camera(img, rng, cfg.camera))
    cache.extend(base + rows, inputs, small, base + len(ix))
