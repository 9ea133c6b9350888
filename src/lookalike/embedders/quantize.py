"""int8 models: static QDQ quantization of an embedder's ONNX graph, calibrated on the
catalogue's own photos, and the check that its vectors still agree with fp32.

Weights become per-channel int8 and activations uint8 (``onnxruntime.quantization``, QDQ
format). The graph takes the same uint8 pixels as the fp32 one; the input normalisation is
folded into the first convolutions (:mod:`lookalike.embedders.fold`), so the quantized convolutions read
the raw pixels and nothing runs before them. Only convolutions, additions, activations and
pooling are quantized; the final pooling and L2 normalisation stay float.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lookalike.embedders import INT8_MODEL, Embedder, cache_dir, fold
from lookalike.errors import LookalikeError
from lookalike.ingest.images import ImageSource, load_model_input
from lookalike.ingest.preprocess import Preprocess
from lookalike.search.vector_index import exact_neighbors

PRECISIONS = ("fp32", "int8")
QUANTIZED_OPS = ["Conv", "Add", "Clip", "Relu", "MatMul", "Gemm", "AveragePool",
                 "GlobalAveragePool"]
MIN_MEAN_COSINE = 0.99  # the check's thresholds: below them a build warns (--strict: refuses)
MIN_AGREEMENT = 0.8
CHECK_PHOTOS = 256  # photos (not the calibration ones) the int8 model is checked on
QUANTIZE_VERSION = 2  # in the cache key: 2 folds the normalisation into the first convolutions


@dataclass(frozen=True)
class Check:
    """int8 against fp32 on the same photos: cosine of each photo's two vectors, and the
    share of each photo's top-10 neighbours (among the sample) that both give."""

    photos: int
    mean_cosine: float
    min_cosine: float
    top10_agreement: float

    @property
    def ok(self) -> bool:
        return self.mean_cosine >= MIN_MEAN_COSINE and self.top10_agreement >= MIN_AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 4) if isinstance(v, float) else v
                   for k, v in asdict(self).items()},
                "thresholds": {"mean_cosine": MIN_MEAN_COSINE, "top10_agreement": MIN_AGREEMENT}}

    def __str__(self) -> str:
        return (f"int8 vs fp32 on {self.photos} photos: mean cosine {self.mean_cosine:.4f}, "
                f"min {self.min_cosine:.4f}, top-10 agreement {self.top10_agreement:.4f}")


def _pixels(sources: Sequence[ImageSource], size: int, pre: Preprocess | None) -> np.ndarray:
    out = []
    for src in sources:
        try:
            out.append(load_model_input(src, size, preprocess=pre or None))
        except LookalikeError:
            continue  # an unreadable calibration photo is left out, not fatal
    if not out:
        raise LookalikeError("none of the calibration photos could be read")
    return np.stack(out)


def quantize(fp32: Embedder, calibration: Sequence[ImageSource], *,
             preprocess: Preprocess | None = None, batch_size: int = 32) -> Embedder:
    """The int8 version of ``fp32``, calibrated on ``calibration`` photos (run through
    ``preprocess`` as the catalogue is). Cached beside the fp32 ONNX, keyed by the model and
    the calibration photos' bytes, so the same calibration is quantized once."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = _pixels(calibration, fp32.spec.input_size, preprocess)
    key = hashlib.sha256(f"v{QUANTIZE_VERSION}".encode())
    key.update(Path(fp32.onnx_path).read_bytes())
    key.update(pixels.tobytes())
    path = cache_dir() / "onnx" / f"{Path(fp32.onnx_path).stem}-int8-{key.hexdigest()[:12]}.onnx"
    if not path.exists():
        batches = iter([{"pixels": pixels[i:i + batch_size]}
                        for i in range(0, len(pixels), batch_size)])

        class Reader(CalibrationDataReader):
            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(batches, None)

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32.onnx_path), str(pre))
            graph = onnx.load(pre)
            centred = fold.fold_normalisation(graph)
            overrides = {}
            if centred is not None:  # its uint8 form is the pixel: scale 1, zero point Z
                onnx.save(graph, pre)
                overrides = {centred.tensor: [{"scale": np.array(1.0, np.float32),
                                               "zero_point": np.array(centred.zero, np.uint8)}]}
            out = Path(tmp) / "int8.onnx"
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8,
                            op_types_to_quantize=QUANTIZED_OPS,
                            extra_options={"TensorQuantOverrides": overrides})
            if centred is not None:
                graph = onnx.load(out)
                if fold.read_raw_pixels(graph, centred):
                    onnx.save(graph, out)
            os.replace(out, path)  # atomic: a crash never leaves half a model in the cache
    return Embedder(replace(fp32.spec, precision="int8"), path)


def check(fp32: Embedder, int8: Embedder, photos: Sequence[ImageSource], *,
          preprocess: Preprocess | None = None, batch_size: int = 32) -> Check:
    """Compare the two models' vectors for ``photos``."""
    pixels = _pixels(photos, fp32.spec.input_size, preprocess)
    a = np.concatenate([fp32(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])
    b = np.concatenate([int8(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) *
                                             np.linalg.norm(b, axis=1), 1e-12)
    k = min(10, len(a) - 1)
    agreement = 1.0
    if k >= 1:
        def top(x: np.ndarray) -> list[set[int]]:  # each photo's k nearest, itself left out
            return [set(r[r != i][:k]) for i, r in enumerate(exact_neighbors(x, x, k + 1))]

        agreement = float(np.mean([len(p & q) / k for p, q in zip(top(a), top(b))]))
    return Check(len(a), float(cos.mean()), float(cos.min()), agreement)


def quantize_catalogue(fp32: Embedder, paths: Sequence[ImageSource | None], *,
                       preprocess: Preprocess | None = None, size: int = 256, seed: int = 0,
                       given: Sequence[ImageSource] | None = None
                       ) -> tuple[Embedder, dict[str, Any]]:
    """Quantize ``fp32`` on a seeded sample of ``size`` of a catalogue's photos (``None``
    entries, missing photos, are left out; or on the ``given`` photos) and check it on up to
    :data:`CHECK_PHOTOS` others. Returns the int8 embedder and the manifest's ``precision``
    entry (calibration, check, and a ``warning`` when below the thresholds)."""
    usable = [i for i, p in enumerate(paths) if p is not None]
    order = [usable[i] for i in np.random.default_rng(seed).permutation(len(usable))]
    calib = list(given) if given is not None else [paths[i] for i in order[:size]]
    rest = order[size:] if given is None and len(order) > size else order
    int8 = quantize(fp32, calib, preprocess=preprocess)
    result = check(fp32, int8, [paths[i] for i in rest[:CHECK_PHOTOS]], preprocess=preprocess)
    info: dict[str, Any] = {
        "precision": "int8", "model": INT8_MODEL,
        "calibration": {"photos": len(calib), "seed": seed,
                        "source": "given" if given is not None else "catalogue"},
        "check": result.to_dict()}
    if not result.ok:
        info["warning"] = (f"the int8 model is far from fp32 ({result}; thresholds: mean "
                           f"cosine >= {MIN_MEAN_COSINE}, agreement >= {MIN_AGREEMENT})")
    return int8, info
