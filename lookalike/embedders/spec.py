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
