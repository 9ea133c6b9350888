"""What shapes a training run (TrainConfig, stored in the checkpoint and in model.json), what
it returns (TrainSummary), and the roles (product, category, colour) taken from the index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lookalike.api import Index
from lookalike.errors import LookalikeError, choose
from lookalike.ingest.catalog import PRODUCT_ID
from lookalike.training.triplets import roles


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


CAMERA_STEPS = ("background", "scale", "rotate", "perspective", "light")
SPLIT_BY = ("product", "photo")


PER_ITEM = 25  # default triplets per epoch per training item


MIN_TRIPLETS, MAX_TRIPLETS = 2_000, 50_000


def resolve_roles(ix: Index, cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """``cfg`` with its roles taken from what the index has: a role left to its default and
    absent is left out with a note; one named and absent is an error."""
    have = set(ix.items.columns)
    for col, param in ((cfg.product, "product="), *((c, "keep=") for c in cfg.keep)):
        if col not in have:
            raise LookalikeError(f"column {col!r} ({param}) is not in index {ix.path}; it has: "
                                 f"{', '.join(ix.attributes)}")
    category, color = roles(have, (ix.category, ix.color), cfg.category, cfg.color, log)
    unknown = [c for c in cfg.camera if c not in CAMERA_STEPS]
    if unknown:
        raise LookalikeError(f"unknown camera step(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(CAMERA_STEPS)}")
    choose(cfg.split_by, SPLIT_BY, "split")
    return replace(cfg, category=category, color=color)
