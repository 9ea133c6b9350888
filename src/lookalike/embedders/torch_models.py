"""The PyTorch side of the embedders: each family's network with the pixel normalisation and
pooling around it, exported to ONNX once (lookalike.embedders runs the exported graphs)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from lookalike.embedders import _onnx_path, get_spec
from lookalike.embedders.spec import EmbedderSpec
from lookalike.files import atomic_path

#: family → the module whose ``build(spec)`` makes its backbone
FAMILIES = {"efficientnet-lite": "efficientnet", "mobilenet-v2": "mobilenet",
            "color-histogram": "histogram"}


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor
                     ) -> torch.Tensor:
    """uint8 NHWC pixels → ``(pixel - mean) * inv_std`` NCHW floats, computed as one 1×1
    per-channel convolution: the same numbers as the subtraction and multiplication, as one op
    in the exported graph, which the int8 rewrite (:mod:`lookalike.embedders.fold`) finds and folds into
    the convolutions that read it."""
    x = pixels.permute(0, 3, 1, 2).float()
    w = inv_std.reshape(3, 1, 1, 1)
    return F.conv2d(x, w, (-mean * inv_std).reshape(3), groups=3)


class _PixelsToEmbedding(nn.Module):
    """uint8 NHWC pixels → normalised NCHW → backbone → mean pool → L2 normalise."""

    def __init__(self, backbone: nn.Module, spec: EmbedderSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.backbone(normalise_pixels(pixels, self.mean, self.inv_std)).mean(dim=(2, 3))
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def build_torch_model(name: str) -> nn.Module:
    """The eager PyTorch model behind an embedder (eval mode): uint8 NHWC → unit vectors."""
    spec = get_spec(name)
    family = importlib.import_module(f".{FAMILIES[spec.family]}", __package__)
    return _PixelsToEmbedding(family.build(spec), spec).eval()


def export_module(model: nn.Module, input_size: int, path: Path) -> Path:
    """Export a uint8 NHWC → embedding module to ONNX at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    # atomic: a concurrent or crashed export never leaves half a file
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's constant-folding chatter
        torch.onnx.export(model.eval(), (dummy,), str(tmp), input_names=["pixels"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def export_onnx(name: str, path: Path | None = None) -> Path:
    """Export the embedder to ONNX (once: an existing file is reused). Returns its path."""
    spec = get_spec(name)
    path = path or _onnx_path(spec)
    if path.exists():
        return path
    return export_module(build_torch_model(name), spec.input_size, path)
