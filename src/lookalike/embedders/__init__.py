"""Name-keyed registry of embedders: ``list_embedders()``, ``create_embedder(name)``.

This module runs embedders (ONNX Runtime) without importing torch; exporting a graph
(:mod:`.torch_models`) is the only part that needs it.

Each embedder is a pretrained CNN whose weights come from a pip package (or, as a baseline, a
colour histogram), wrapped into a graph that takes uint8 RGB pixels (N, H, W, 3), normalises
them, pools the last feature map and L2-normalises. The graph is exported to ONNX once (cached) and run with ONNX Runtime on CPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.embedders.spec import SPECS, EmbedderSpec
from lookalike.errors import IndexFormatError, LookalikeError, choose

__all__ = [
    "DEFAULT_EMBEDDER",
    "INT8_MODEL",
    "Embedder",
    "EmbedderSpec",
    "build_torch_model",
    "create_embedder",
    "export_module",
    "get_spec",
    "index_embedder",
    "is_trained_model",
    "list_embedders",
    "normalise_pixels",
    "onnx_session",
    "trained_meta",
]

DEFAULT_EMBEDDER = "efficientnet-lite0"
_SPECS = {s.name: s for s in SPECS}
EXPORT_VERSION = 2  # bump when the exported graph changes (2: normalisation as a 1x1 conv)
#: what lives in .torch_models (PyTorch), imported on first use only: searching, serving and the
#: Ray workers run on ONNX Runtime and never load torch
_TORCH = {"build_torch_model", "export_module", "export_onnx", "normalise_pixels"}

INT8_MODEL = "model-int8.onnx"  # an int8 index keeps its model: queries must use the same one

def __getattr__(name: str) -> Any:
    if name in _TORCH:
        from lookalike.embedders import torch_models

        return getattr(torch_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_embedders() -> list[str]:
    return sorted(_SPECS)


def get_spec(name: str) -> EmbedderSpec:
    return _SPECS[choose(name, list_embedders(), "embedder")]


def cache_dir() -> Path:
    env = os.environ.get("LOOKALIKE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base if env else base / "lookalike"


def _onnx_path(spec: EmbedderSpec) -> Path:
    try:  # the exporter's version, read without importing it
        exporter = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        exporter = "none"
    key = json.dumps([spec.to_dict(), EXPORT_VERSION, exporter], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{spec.name}-{digest}.onnx"


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
    path = _onnx_path(spec)
    if not path.exists():  # exported once per embedder, torch version and graph version
        from lookalike.embedders.torch_models import export_onnx

        path = export_onnx(name, path)
    return Embedder(spec, path, threads=threads)


def index_embedder(folder: Path, spec: EmbedderSpec, precision: dict[str, Any]) -> Embedder:
    """The embedder an index folder was built with: its own int8 copy (kept in the folder),
    or the named model, refused when this installation's differs from the one recorded."""
    if spec.precision == "int8":
        model = Path(folder) / precision.get("model", INT8_MODEL)
        if not model.is_file():
            raise IndexFormatError(f"index {folder} was embedded with an int8 model, and its "
                                   f"{model.name} is missing; rebuild the index")
        return Embedder(spec, model)
    embedder = create_embedder(spec.source or spec.name)
    if embedder.spec != spec:
        raise IndexFormatError(
            f"index {folder} was built with a different {spec.name!r} (weights "
            f"{spec.weights}, input {spec.input_size}) than this lookalike provides "
            f"({embedder.spec.weights}, {embedder.spec.input_size}); rebuild the index")
    return embedder
