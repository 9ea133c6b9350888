"""lookalike — find visually similar products in a shop's catalogue.

The public API is what this module exports: open or build an :class:`Index` and ask it for
similar items (:class:`Hit`), read a catalogue, measure and report quality, train a model.
Everything else is internal and may change; the build's option objects (engines, stores,
precisions) live in :mod:`lookalike.build`. ``import lookalike`` loads no PyTorch: ``train``
and ``TrainConfig`` load it on first use.
"""

from lookalike.api import Hit, Index
from lookalike.build import build_index
from lookalike.errors import (
    CatalogError,
    ImageError,
    IndexFormatError,
    ItemExistsError,
    LookalikeError,
    UnknownItemError,
)
from lookalike.ingest.catalog import read_catalog
from lookalike.quality.report import write_report
from lookalike.quality.runs import evaluate_indexes


def __getattr__(name: str) -> object:
    """``train`` and ``TrainConfig`` on first use: training needs PyTorch, which
    ``import lookalike``, searching and serving do not load."""
    if name == "train":
        from lookalike.training.loop import train

        return train
    if name == "TrainConfig":
        from lookalike.training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CatalogError",
    "Hit",
    "ImageError",
    "Index",
    "IndexFormatError",
    "ItemExistsError",
    "LookalikeError",
    "TrainConfig",
    "UnknownItemError",
    "build_index",
    "evaluate_indexes",
    "read_catalog",
    "train",
    "write_report",
]
