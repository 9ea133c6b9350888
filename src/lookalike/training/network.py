"""The Deep Ranking network (Wang et al., CVPR 2014) and its triplet loss.

A pretrained backbone's pooled features (fine semantics) plus two shallow convolutional branches
on the photo subsampled 4× and 8× (colour, coarse shape), each L2-normalised, concatenated and
projected by a linear layer to the embedding, which is L2-normalised again.

The network is written so that the backbone can be left out while training: with a frozen
backbone its features are computed once (they are exactly the index's embeddings) and the
branches read a cached 4×-subsampled copy of each photo, so an epoch costs seconds, not hours.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.embedders import EmbedderSpec, build_torch_model, get_spec, normalise_pixels

DEFAULT_DIM = 512
FILTERS = 96


class ShallowBranch(nn.Module):
    """A subsampled view → an 8×8 convolution (96 filters, stride 4) → ReLU → 3×3 max-pool
    (stride 2) → flatten. ``factor`` is the subsampling relative to the model's input."""

    def __init__(self, factor: int, input_size: int, filters: int = FILTERS) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(3, filters, kernel_size=8, stride=4)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        side = input_size // factor
        side = (side - 8) // 4 + 1
        side = (side - 3) // 2 + 1
        if side < 1:
            raise ValueError(f"input {input_size}px is too small for a {factor}× branch")
        self.out_dim = filters * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.conv(x))).flatten(1)


class DeepRanking(nn.Module):
    """Backbone features + 4× and 8× branches → linear → unit embedding.

    ``forward(pixels)`` takes uint8 NHWC pixels like every embedder; ``embed(features,
    small)`` is the same computation from the backbone's unit features and the photo
    subsampled 4× (normalised pixels, NCHW), the form used in training with a frozen backbone.
    """

    def __init__(self, backbone: str, dim: int = DEFAULT_DIM, *,
                 with_backbone: bool = True) -> None:
        super().__init__()
        self.backbone_spec: EmbedderSpec = get_spec(backbone)
        spec = self.backbone_spec
        pixels_to_embedding = build_torch_model(backbone) if with_backbone else None
        self.features = pixels_to_embedding.backbone if pixels_to_embedding else None
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(spec.std).view(1, 3, 1, 1))
        self.branch4 = ShallowBranch(4, spec.input_size)
        self.branch8 = ShallowBranch(8, spec.input_size)
        self.project = nn.Linear(spec.dim + self.branch4.out_dim + self.branch8.out_dim, dim)
        self.dim = dim

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalise_pixels(pixels, self.mean, self.inv_std)

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit pooled backbone features of normalised NCHW pixels (= the index's vectors)."""
        if self.features is None:
            raise RuntimeError("this DeepRanking was made without its backbone")
        f = self.features(x).mean(dim=(2, 3))
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def embed(self, features: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
        parts = [F.normalize(features, dim=1),
                 F.normalize(self.branch4(small), dim=1),
                 F.normalize(self.branch8(F.avg_pool2d(small, 2)), dim=1)]
        return F.normalize(self.project(torch.cat(parts, dim=1)), dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalise(pixels)
        return self.embed(self.backbone_features(x), F.avg_pool2d(x, 4))

    # fine-tuning the last backbone stages: the frozen front runs once, the tail every step

    def stages(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]]:
        if self.features is None:
            raise RuntimeError("this DeepRanking was made without its backbone")
        return self.features.stages()

    def front(self, x: torch.Tensor, tune: int) -> torch.Tensor:
        """Activations of normalised pixels before the last ``tune`` backbone stages."""
        stages = self.stages()
        for fn, _ in stages[:len(stages) - tune]:
            x = fn(x)
        return x

    def embed_from(self, activations: torch.Tensor, small: torch.Tensor, tune: int) -> torch.Tensor:
        """The embedding from ``front``'s activations: the last ``tune`` stages, pooling, the
        branches and the projection."""
        stages = self.stages()
        x = activations
        for fn, _ in stages[len(stages) - tune:]:
            x = fn(x)
        f = x.mean(dim=(2, 3))
        return self.embed(f / f.norm(dim=1, keepdim=True).clamp_min(1e-12), small)

    def tail_modules(self, tune: int) -> list[nn.Module]:
        """The modules of the last ``tune`` stages (the ones fine-tuning trains)."""
        stages = self.stages()
        if not 0 <= tune <= len(stages):
            raise ValueError(f"the backbone has {len(stages)} stages, cannot tune {tune}")
        return [m for _, mods in stages[len(stages) - tune:] for m in mods]


def subsample4(pixels: torch.Tensor, spec: EmbedderSpec) -> torch.Tensor:
    """Normalised pixels subsampled 4× (what ``DeepRanking.embed`` takes as ``small``)."""
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return F.avg_pool2d((pixels.permute(0, 3, 1, 2).float() - mean) / std, 4)


def triplet_loss(query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 gap: float) -> torch.Tensor:
    """mean over triplets of max(0, g + D(q, p) − D(q, n)), D the squared Euclidean distance
    (pytorch-metric-learning's TripletMarginLoss with explicit triplets)."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    loss = TripletMarginLoss(margin=gap, reducer=MeanReducer(),
                             distance=LpDistance(normalize_embeddings=False, p=2, power=2))
    n = len(query)
    idx = torch.arange(n)
    return loss(torch.cat([query, positive, negative]), indices_tuple=(idx, idx + n, idx + 2 * n))
