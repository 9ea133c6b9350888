"""lookalike — find visually similar products in a shop's catalogue."""

from lookalike.api import Hit, Index, UpdateSummary
from lookalike.build import BuildSummary, build_index
from lookalike.embed.local import EmbedResult, embed_images
from lookalike.embedders import create_embedder, list_embedders
from lookalike.errors import (
    CatalogError,
    ImageError,
    IndexFormatError,
    ItemExistsError,
    LookalikeError,
    UnknownItemError,
)
from lookalike.ingest.catalog import Catalog, read_catalog
from lookalike.ingest.images import load_image
from lookalike.ingest.preprocess import Preprocess
from lookalike.quality.report import write_report
from lookalike.quality.runs import evaluate_indexes, read_label_mapping, read_query_set
from lookalike.training.splits import assign_splits
from lookalike.training.triplets import sample_triplets, write_triplets


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
    "BuildSummary",
    "Catalog",
    "CatalogError",
    "EmbedResult",
    "Hit",
    "ImageError",
    "Index",
    "IndexFormatError",
    "ItemExistsError",
    "LookalikeError",
    "Preprocess",
    "TrainConfig",
    "UnknownItemError",
    "UpdateSummary",
    "assign_splits",
    "build_index",
    "create_embedder",
    "embed_images",
    "evaluate_indexes",
    "list_embedders",
    "load_image",
    "read_catalog",
    "read_label_mapping",
    "read_query_set",
    "sample_triplets",
    "train",
    "write_report",
    "write_triplets",
]
