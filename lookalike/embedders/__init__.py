"""Name-keyed registry of embedders: ``list_embedders()``, ``create_embedder(name)``.

Each embedder is a pretrained CNN whose weights come from a pip package (or, as a baseline, a
colour histogram), wrapped into a graph that takes uint8 RGB pixels (N, H, W, 3), normalises
them, pools the last feature map and L2-normalises. The graph is exported to ONNX once (cached) and run with ONNX Runtime on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import LookalikeError
from . import efficientnet, histogram, mobilenet
from .spec import EmbedderSpec

__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "EmbedderSpec",
    "build_torch_model",
    "create_embedder",
    "export_module",
    "get_spec",
    "is_trained_model",
    "list_embedders",
    "normalise_pixels",
    "onnx_session",
    "trained_meta",
]

DEFAULT_EMBEDDER = "efficientnet-lite0"
_FAMILIES: dict[str, tuple[list[EmbedderSpec], Callable[[EmbedderSpec], nn.Module]]] = {
    "efficientnet-lite": (efficientnet.SPECS, efficientnet.build),
    "mobilenet-v2": (mobilenet.SPECS, mobilenet.build),
    "color-histogram": (histogram.SPECS, histogram.build),
}
_SPECS = {s.name: s for specs, _ in _FAMILIES.values() for s in specs}
EXPORT_VERSION = 2  # bump when the exported graph changes (2: normalisation as a 1x1 conv)


def list_embedders() -> list[str]:
    return sorted(_SPECS)


def get_spec(name: str) -> EmbedderSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise LookalikeError(f"unknown embedder {name!r}; choose one of: "
                             f"{', '.join(list_embedders())}") from None


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor
                     ) -> torch.Tensor:
    """uint8 NHWC pixels → ``(pixel - mean) * inv_std`` NCHW floats, computed as one 1×1
    per-channel convolution: the same numbers as the subtraction and multiplication, as one op
    in the exported graph, which the int8 rewrite (:mod:`lookalike.fold`) finds and folds into
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
    build = _FAMILIES[spec.family][1]
    return _PixelsToEmbedding(build(spec), spec).eval()


def cache_dir() -> Path:
    env = os.environ.get("LOOKALIKE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base if env else base / "lookalike"


def _onnx_path(spec: EmbedderSpec) -> Path:
    key = json.dumps([spec.to_dict(), EXPORT_VERSION, torch.__version__], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{spec.name}-{digest}.onnx"


def export_module(model: nn.Module, input_size: int, path: Path) -> Path:
    """Export a uint8 NHWC → embedding module to ONNX at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's constant-folding chatter
            torch.onnx.export(model.eval(), (dummy,), tmp, input_names=["pixels"],
                              output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
        os.replace(tmp, path)  # atomic: a concurrent or crashed export never leaves half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(name: str, path: Path | None = None) -> Path:
    """Export the embedder to ONNX (once: an existing file is reused). Returns its path."""
    spec = get_spec(name)
    path = path or _onnx_path(spec)
    if path.exists():
        return path
    return export_module(build_torch_model(name), spec.input_size, path)


def onnx_session(path: Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for a model file (or its bytes): ``threads`` (default: all
    cores) within each operator, full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class Embedder:
    """An ONNX Runtime session for one embedder: uint8 (N, S, S, 3) → float32 (N, dim)."""

    def __init__(self, spec: EmbedderSpec, onnx_path: Path, threads: int | None = None) -> None:
        self.spec = spec
        self.onnx_path = onnx_path
        self._session = onnx_session(onnx_path, threads)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        s = self.spec.input_size
        if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"{self.name} expects uint8 pixels of shape (N, {s}, {s}, 3), "
                             f"got {pixels.dtype} {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._session.run(None, {"pixels": np.ascontiguousarray(pixels)})[0]
        return np.asarray(out, dtype=np.float32)


TRAINED_SPEC = "model.json"
TRAINED_ONNX = "model.onnx"


def is_trained_model(name_or_path: str | os.PathLike) -> bool:
    return (Path(name_or_path) / TRAINED_SPEC).is_file()


def trained_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A trained model folder's model.json (its spec, training set-up and history)."""
    folder = Path(path)
    try:
        meta = json.loads((folder / TRAINED_SPEC).read_text())
        EmbedderSpec.from_dict(meta["embedder"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LookalikeError(f"{folder} is not a usable trained model ({TRAINED_SPEC}: {e})") from None
    return meta


def trained_spec(path: str | os.PathLike) -> EmbedderSpec:
    """The spec of a trained model folder (``lookalike train``'s output)."""
    folder = Path(path)
    spec = EmbedderSpec.from_dict(trained_meta(folder)["embedder"])
    if not (folder / TRAINED_ONNX).is_file():
        raise LookalikeError(f"trained model {folder} has no {TRAINED_ONNX}")
    return spec


def create_embedder(name: str = DEFAULT_EMBEDDER, *, threads: int | None = None) -> Embedder:
    """Create an embedder by name (see :func:`list_embedders`; exported to ONNX on first use)
    or from a trained model folder (``lookalike train --out FOLDER``)."""
    if is_trained_model(name):
        return Embedder(trained_spec(name), Path(name) / TRAINED_ONNX, threads=threads)
    if os.sep in str(name) or Path(name).exists():
        raise LookalikeError(f"{name} is neither an embedder name ({', '.join(list_embedders())})"
                             f" nor a trained model folder (no {TRAINED_SPEC})")
    spec = get_spec(name)
    return Embedder(spec, export_onnx(name), threads=threads)
