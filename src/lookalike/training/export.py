"""Writing a training run out: the checkpoint, the best epoch as an ONNX embedder with its
model.json, and the training curve.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lookalike.api import Index
from lookalike.embedders import (
    TRAINED_ONNX,
    TRAINED_SPEC,
    EmbedderSpec,
    export_module,
)
from lookalike.errors import LookalikeError
from lookalike.files import atomic_path
from lookalike.quality.plots import figure
from lookalike.store.folder import now
from lookalike.training.config import TrainConfig
from lookalike.training.epochs import Labels
from lookalike.training.network import DeepRanking

CHECKPOINT = "checkpoint.pt"


CURVE = "training_curve.png"


def save_checkpoint(path: Path, model: DeepRanking, labels: Labels, opt: torch.optim.Optimizer,
                     epoch: int, history: list[dict[str, float]], best_score: float,
                     best_state: dict[str, torch.Tensor] | None, best_epoch: int,
                     cfg: TrainConfig, ix: Index) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "labels": labels.state_dict(),
                    "optimizer": opt.state_dict(), "epoch": epoch, "history": history,
                    "best_score": best_score, "best_model": best_state,
                    "best_epoch": best_epoch, "config": asdict(cfg), "index": str(ix.path)}, tmp)


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
                        ix.spec.mean, ix.spec.std, weights=weights(onnx_path),
                        source=str(out.resolve()))
    write_meta(out, model_meta(ix, cfg, spec, best_epoch=best_epoch, history=history,
                                 splits=split_counts))
    return spec


def weights(onnx_path: Path) -> str:
    """A model folder's weights as its spec names them: the file and its digest."""
    return f"{onnx_path.name} sha256:{hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]}"


def model_meta(ix: Index, cfg: TrainConfig, spec: EmbedderSpec, **more: Any) -> dict[str, Any]:
    """model.json: the model's spec, what it was trained from and how, and ``more``."""
    return {"embedder": spec.to_dict(), "backbone": ix.spec.to_dict(), "config": asdict(cfg),
            "index": str(ix.path), "preprocess": ix.preprocess.to_dict(),
            "catalog": catalog_meta(ix, cfg), "trained": now(), **more}


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write model.json atomically."""
    with atomic_path(out / TRAINED_SPEC) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=float))


def catalog_meta(ix: Index, cfg: TrainConfig) -> dict[str, Any]:
    """The training catalogue's columns as ``build --model`` takes them: the index's, with
    the category and colour roles training used."""
    cat = ix.manifest["catalog"]
    columns = {**(cat.get("columns") or {}), "category": cfg.category, "color": cfg.color}
    return {"columns": columns, "attributes": cat.get("attributes")}


def update_meta(out: Path, extra: dict[str, Any]) -> None:
    write_meta(out, {**json.loads((out / TRAINED_SPEC).read_text()), **extra})


def plot_curve(history: list[dict[str, float]], keys: Sequence[str], out: Path) -> Path:
    """Loss and validation metrics per epoch (epoch 0: before training), with the pretrained
    backbone's as dashed lines."""
    epochs = [h["epoch"] for h in history]
    with figure(out, 1, 2, size=(10, 3.6)) as axes:
        a, b = axes[0]
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
    return out
