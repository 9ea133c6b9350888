"""Plots of evaluation and training results (PNG, matplotlib without a display).

:func:`figure` is the one set-up every plot goes through: the headless backend, a grid of
axes, the layout, and the file written when the block ends.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.quality.metrics import PRODUCT
from lookalike.quality.runs import IndexQuality
from lookalike.quality.tables import group_frames, ks_of, relevances

DPI = 100


@contextlib.contextmanager
def figure(out: Path, rows: int = 1, cols: int = 1, *, size: tuple[float, float]
           ) -> Iterator[Any]:
    """A figure of ``rows`` × ``cols`` axes (a 2-D array) to draw on; laid out, written to
    ``out`` and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(out, dpi=DPI)
    finally:
        plt.close(fig)


def plot_precision(results: Sequence[IndexQuality], out: Path) -> Path:
    """precision@k (recall@k for the product) per relevance, one line per index."""
    rels = relevances(results[0])
    cols = min(3, len(rels))
    rows = math.ceil(len(rels) / cols)
    with figure(out, rows, cols, size=(4.2 * cols, 3.2 * rows)) as axes:
        _precision_axes(results, rels, axes)
    return out


def _precision_axes(results: Sequence[IndexQuality], rels: list[str], axes: Any) -> None:
    for ax, rel in zip(axes.ravel(), rels):
        metric = "recall" if rel == PRODUCT else "precision"
        for res in results:
            m = res.metrics
            ks = [int(k) for k in ks_of(m, metric, rel) if k.isdigit()]
            ax.plot(ks, [m[f"{metric}@{k}/{rel}"] for k in ks], marker="o", label=res.label)
        ax.set_title(rel, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(rels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)


def plot_groups(results: Sequence[IndexQuality], attr: str, out: Path, top: int = 25) -> Path:
    """The first metric per value of ``attr`` (its largest groups), one bar per index."""
    cols, parts = group_frames(results, attr)
    groups = list(parts[0].index[:top])[::-1]
    n = len(results)
    with figure(out, size=(7, 0.3 * len(groups) * max(1.0, n / 2) + 1.4)) as axes:
        _group_bars(axes[0, 0], results, attr, cols, parts, groups)
    return out


def _group_bars(ax: Any, results: Sequence[IndexQuality], attr: str, cols: list[str],
                parts: list[Any], groups: list[Any]) -> None:
    n = len(results)
    height = 0.8 / n
    y = np.arange(len(groups))
    for i, (res, part) in enumerate(zip(results, parts)):
        vals = part[cols[0]].reindex(groups).fillna(0).to_numpy()
        ax.barh(y + i * height - 0.4 + height / 2, vals, height, label=res.label)
    sizes = parts[0]["queries"]
    ax.set_yticks(y, [f"{g} ({int(sizes[g])})" for g in groups], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(cols[0].replace("/", " — same "))
    ax.set_title(f"by {attr} (largest {len(groups)} groups; queries in brackets)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
