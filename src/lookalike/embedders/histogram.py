"""The colour-histogram baseline: an 8×8×8 joint RGB histogram, L2-normalised.

No learned weights. It sets the floor every report compares the deep features against: what
colour alone, with no notion of shape or texture, retrieves.
"""

from __future__ import annotations

import torch
from torch import nn

from lookalike.embedders.spec import HISTOGRAM_BINS as BINS
from lookalike.embedders.spec import EmbedderSpec


class RGBHistogram(nn.Module):
    """Pixel values 0..255 (N, 3, H, W) → bin shares (N, bins³, 1, 1), bin = r·b² + g·b + b."""

    def __init__(self, bins: int = BINS) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = torch.clamp(torch.floor(x * (self.bins / 256.0)), 0, self.bins - 1).long()
        idx = ((q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]).reshape(n, h * w)
        counts = torch.zeros(n, self.bins ** 3, dtype=x.dtype, device=x.device)
        counts = counts.scatter_add(1, idx, torch.ones_like(idx, dtype=x.dtype))
        return (counts / (h * w))[:, :, None, None]


def build(spec: EmbedderSpec) -> nn.Module:
    return RGBHistogram(round(spec.dim ** (1 / 3)))
