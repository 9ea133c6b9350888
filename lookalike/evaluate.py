"""Retrieval quality as named numbers (pure functions over arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def attribute_labels(items: pd.DataFrame, attributes: Sequence[str]) -> np.ndarray:
    """One label per item: the values of ``attributes`` joined, e.g. ``"Shirts|Blue"``."""
    return items[list(attributes)].astype("string").fillna("").agg("|".join, axis=1).to_numpy()


def precision_at_k(neighbors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean share of each item's first ``k`` neighbours (rows of ``neighbors``, the item itself
    already excluded) whose label equals the item's label."""
    if neighbors.shape[1] < k:
        raise ValueError(f"need at least {k} neighbours per item, got {neighbors.shape[1]}")
    return float((labels[neighbors[:, :k]] == labels[:, None]).mean())
