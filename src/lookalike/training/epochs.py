"""One epoch of triplet training: the network with its classification head, embedding the
cached rows, mining hard negatives, and the optimiser steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.api import Index
from lookalike.errors import LookalikeError
from lookalike.progress import progress_bar
from lookalike.search.exact import rank
from lookalike.training.config import TrainConfig
from lookalike.training.network import DeepRanking, triplet_loss
from lookalike.training.triplets import TripletSet
from lookalike.training.views import Cache


class Labels(nn.Module):
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


def embed_rows(model: DeepRanking, cache: Cache, rows: np.ndarray, tune: int,
                augmented: np.ndarray | None = None) -> torch.Tensor:
    x, small = cache.get(rows, augmented)
    return model.embed_from(x, small, tune) if tune else model.embed(x, small)


def set_train(model: DeepRanking, tune: int) -> None:
    """Training mode for the head and the tuned stages; batch norms keep their statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def embed_all(model: DeepRanking, cache: Cache, rows: np.ndarray, tune: int) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = [embed_rows(model, cache, rows[i:i + 512], tune).numpy()
               for i in range(0, len(rows), 512)]
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def mine(model: DeepRanking, cache: Cache, ix: Index, rows: np.ndarray, cfg: TrainConfig
          ) -> np.ndarray:
    """Per item row: the rows of the ``cfg.hard_negatives`` nearest other products among
    ``rows`` in the current embedding (-1 elsewhere)."""
    emb = embed_all(model, cache, rows, cfg.finetune_stages)
    prod = pd.factorize(ix.items[cfg.product].astype("string").fillna("").to_numpy()[rows])[0]
    extra = int(np.bincount(prod).max())
    found, _ = rank(emb, emb, min(len(rows), cfg.hard_negatives + extra))
    other = (found >= 0) & (prod[np.maximum(found, 0)] != prod[:, None])
    out = np.full((len(ix), cfg.hard_negatives), -1, np.int64)
    for i in range(len(rows)):
        near = found[i][other[i]][:cfg.hard_negatives]
        out[rows[i], :len(near)] = rows[near]
    return out


def run_epoch(model: DeepRanking, labels: Labels, opt: torch.optim.Optimizer, cache: Cache,
               ts: TripletSet, cfg: TrainConfig, epoch: int, progress: bool
               ) -> tuple[float, float]:
    """One pass over ``ts`` in shuffled batches; returns mean loss and triplet accuracy."""
    tune = cfg.finetune_stages
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(ts))
    set_train(model, tune)
    total = correct = seen = 0.0
    with progress_bar(len(ts), unit="triplet", desc=f"epoch {epoch + 1}/{cfg.epochs}",
                      show=progress) as bar:
        for b in range(0, len(ts), cfg.batch_size):
            i = order[b:b + cfg.batch_size]
            q, p, n = ts.query[i], ts.positive[i], ts.negative[i]
            zq = embed_rows(model, cache, q, tune)
            zp = embed_rows(model, cache, p, tune, ts.positive_type[i] == 1)
            zn = embed_rows(model, cache, n, tune)
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


def make_model(backbone: str, cfg: TrainConfig
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
            raise LookalikeError(f"finetune_stages=: {e}") from None
        for p in tuned:
            p.requires_grad_(True)
        model.eval()
    return model, head, tuned
