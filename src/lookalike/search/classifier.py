"""A category classifier on the embedding: the learned alternative to the category vote.

The vote (:mod:`lookalike.search.rerank`) guesses a query photo's category from its nearest catalogue
items; where the photo looks unlike the catalogue (a phone photo of a shirt on a bed against
flat-lay product shots) its neighbours mislead it. The classifier is a linear layer (softmax
regression) on the same unit vectors, fitted by ``lookalike train`` on the catalogue's training
items and, where given, on labelled outside photos (e.g. customers' photos) whose label maps to a
*set* of categories (a street "Pants" photo is right as Jeans or Trousers): for those the loss is
``-log Σ p(c)`` over the set, so the layer learns what such photos look like without being told
which of the set's categories each one is.

It lives beside the model it was fitted for (``category_head.npz`` in the model folder) and an
index built with that model uses it through ``--rerank classify``: the query's category is the
classifier's answer, and that category is ranked first, as with the vote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.errors import IndexFormatError, LookalikeError
from lookalike.files import atomic_path
from lookalike.ingest.catalog import label_codes

HEAD_FILE = "category_head.npz"
#: unit vectors are scaled by this before the layer (a starting temperature: the layer can
#: still learn any scale, but Adam reaches it in fewer steps)
INPUT_SCALE = 10.0


@dataclass
class CategoryHead:
    """Softmax regression ``weight @ (INPUT_SCALE · v) + bias`` over ``classes`` (values of
    the catalogue's ``column``)."""

    column: str
    classes: list[str]
    weight: np.ndarray  # (n_classes, dim) float32
    bias: np.ndarray  # (n_classes,) float32

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        # einsum, not BLAS: a BLAS call between two faiss searches makes their threads fight
        # (measured: similar-by-id 1.5 → 2.5 ms per item in the server's batch)
        return INPUT_SCALE * np.einsum("nd,cd->nc", v, self.weight) + self.bias

    def predict(self, vectors: np.ndarray) -> list[str]:
        """The most likely category of each vector (n, dim)."""
        return [self.classes[i] for i in self.logits(vectors).argmax(axis=1).tolist()]

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``folder/category_head.npz`` (atomically); returns its digest."""
        path = Path(folder) / HEAD_FILE
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, column=np.array(self.column), classes=np.array(self.classes, dtype=str),
                     weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32))
        return head_digest(folder)


def head_digest(folder: str | os.PathLike) -> str:
    return hashlib.sha256((Path(folder) / HEAD_FILE).read_bytes()).hexdigest()[:16]


def has_head(folder: str | os.PathLike | None) -> bool:
    return bool(folder) and (Path(folder) / HEAD_FILE).is_file()  # type: ignore[arg-type]


def load_head(folder: str | os.PathLike, digest: str | None = None) -> CategoryHead:
    """The classifier of a model folder; ``digest`` (recorded by the index built with it)
    must match, so that an index never re-ranks with a classifier retrained since."""
    path = Path(folder) / HEAD_FILE
    try:
        if digest is not None and head_digest(folder) != digest:
            raise IndexFormatError(f"{path} changed since the index was built (digest "
                                   f"{head_digest(folder)}, the index has {digest}); rebuild "
                                   "the index with this model")
        with np.load(path, allow_pickle=False) as z:
            return CategoryHead(str(z["column"]), [str(c) for c in z["classes"]],
                                np.asarray(z["weight"], np.float32),
                                np.asarray(z["bias"], np.float32))
    except (OSError, KeyError, ValueError) as e:
        raise IndexFormatError(f"cannot read the category classifier {path}: {e}") from None


def fit_head(column: str, vectors: np.ndarray, labels: Sequence[object],
             outside: np.ndarray | None = None,
             outside_values: Sequence[Collection[str]] = (), *,
             outside_weight: float = 1.0, epochs: int = 300, lr: float = 0.01,
             weight_decay: float = 1e-4, seed: int = 0) -> CategoryHead:
    """Fit the classifier on catalogue ``vectors`` (n, d) with their category ``labels``
    (None or "" = unknown, left out), and on ``outside`` vectors (m, d) whose right answers
    are the categories in ``outside_values[j]`` (any of them counts; a photo none of whose
    values is a known category is left out). The two losses are means, added with
    ``outside_weight``.
    Full-batch Adam: a few seconds for 10k vectors."""
    import torch  # (fitting only: predicting is numpy, and serving never loads torch)
    import torch.nn.functional as F

    names = np.array([str(x) if x is not None else "" for x in labels], dtype=object)
    known = names != ""
    classes = sorted(set(names[known].tolist()))
    if len(classes) < 2:
        raise LookalikeError(f"a category classifier needs at least 2 categories in {column!r}, "
                         f"found {len(classes)}")
    code = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(np.asarray(vectors, np.float32)[known] * INPUT_SCALE)
    y = torch.tensor([code[c] for c in names[known]], dtype=torch.int64)
    xo = mo = None
    if outside is not None and len(outside):
        sets = np.zeros((len(outside), len(classes)), bool)
        for j, values in enumerate(outside_values):
            sets[j, [code[v] for v in values if v in code]] = True
        keep = sets.any(axis=1)
        xo = torch.from_numpy(np.asarray(outside, np.float32)[keep] * INPUT_SCALE)
        mo = torch.from_numpy(sets[keep])
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], len(classes))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(layer(x), y)
        if xo is not None and mo is not None and len(xo):
            logp = torch.log_softmax(layer(xo), dim=1).masked_fill(~mo, float("-inf"))
            loss = loss - outside_weight * torch.logsumexp(logp, dim=1).mean()
        loss.backward()
        opt.step()
    return CategoryHead(column, classes, layer.weight.detach().numpy().copy(),
                        layer.bias.detach().numpy().copy())



def coded(head: CategoryHead, items: pd.DataFrame, column: str
          ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """For ranking ``items`` (a gallery) with the classifier: their category codes
    (:func:`lookalike.ingest.catalog.label_codes`) and a function from query vectors to the code of
    the category the classifier names (-1 where no gallery item has it)."""
    codes = label_codes(items, [column])
    values = items[column].astype("string").fillna("").to_numpy()
    code_of = dict(zip(values.tolist(), codes.tolist()))

    def classify(queries: np.ndarray) -> np.ndarray:
        return np.array([code_of.get(c, -1) for c in head.predict(queries)], np.int64)

    return codes, classify
