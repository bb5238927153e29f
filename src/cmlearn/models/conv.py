"""The Conv-4 backbone of MAML / CML (paper §2, official ``maml/model_cml.py``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from cmlearn.models.cooperative import BodyHead
from cmlearn.registry import MODELS, check

BN_MODES = ("transductive", "running")


def conv_block(cin: int, cout: int, pool: bool, bn: str) -> nn.Sequential:
    """3×3 conv → BatchNorm → ReLU (→ 2×2 max-pool).

    ``bn="transductive"`` normalises every forward pass with its own batch statistics (the
    paper's and every reference implementation's behaviour); ``"running"`` tracks running
    statistics and uses them in ``eval()`` mode.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown BatchNorm mode {bn!r}; choose from {BN_MODES}")
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=bn == "running"),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(BodyHead):
    """``blocks`` conv blocks; the last has no pool, which moves into the head (as in the code),
    so a co-learner reads the last block's pre-pool feature map.

    Body children are ``conv1 … convN`` (then ``extra1 …``: More-MAML's additional unpooled
    blocks, PAPER.md Table 4); the default co-learner point is the last of them.
    """

    def __init__(
        self,
        in_channels: int,
        n_way: int,
        image_size: int,
        channels: int = 64,
        blocks: int = 4,
        bn: str = "transductive",
        extra: int = 0,
    ) -> None:
        body = OrderedDict(
            (
                f"conv{i + 1}",
                conv_block(in_channels if i == 0 else channels, channels, i < blocks - 1, bn),
            )
            for i in range(blocks)
        )
        for i in range(extra):
            body[f"extra{i + 1}"] = conv_block(channels, channels, False, bn)
        side = image_size
        for _ in range(blocks):  # floor division at every pool, as max_pool2d does
            side //= 2
        if side < 1:
            raise ValueError(f"{image_size}px images are too small for {blocks} pooled blocks")
        head = nn.Sequential(
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * side * side, n_way)
        )
        super().__init__(nn.Sequential(body), head)


@dataclass(frozen=True)
class Conv4Options:
    channels: int = 64
    blocks: int = 4
    bn: str = "transductive"  # transductive (MAML's batch statistics) | running
    extra: int = 0  # More-MAML: unpooled conv blocks added after the last block (3 → 232K)

    def __post_init__(self) -> None:
        check(0 < self.channels <= 4096, "model.channels must be in [1, 4096]")
        check(0 < self.blocks <= 8, "model.blocks must be in [1, 8]")
        check(self.bn in BN_MODES, f"model.bn must be one of {BN_MODES}")
        check(0 <= self.extra <= 16, "model.extra must be in [0, 16]")


@MODELS.register("conv4", Conv4Options, "Conv-4 (conv3×3-BN-ReLU-pool blocks; last pool in head)")
def conv4(options: Conv4Options, input_shape: tuple[int, ...], out_features: int) -> ConvNet:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"model 'conv4' needs square images, not examples of shape {input_shape}")
    return ConvNet(
        input_shape[0],
        out_features,
        input_shape[1],
        options.channels,
        options.blocks,
        options.bn,
        options.extra,
    )
