"""The Conv-4 backbone of MAML / CML (paper §2, official ``maml/model_cml.py``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from cmlearn.models.cooperative import BodyHead
from cmlearn.models.layers import StepBatchNorm2d
from cmlearn.registry import MODELS, check

BN_MODES = ("transductive", "running")

if TYPE_CHECKING:
    from cmlearn.tasks.batch import TaskSource


def conv_block(cin: int, cout: int, pool: bool, bn: str, bn_steps: int = 0) -> nn.Sequential:
    """3×3 conv → BatchNorm → ReLU (→ 2×2 max-pool).

    ``bn="transductive"`` normalises every forward pass with its own batch statistics (the
    paper's and every reference implementation's behaviour); ``"running"`` tracks running
    statistics and uses them in ``eval()`` mode. ``bn_steps > 0`` gives MAML++'s per-step
    γ/β (transductive statistics, as MAML++'s released code in effect normalises).
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown BatchNorm mode {bn!r}; choose from {BN_MODES}")
    if bn_steps and bn != "transductive":
        raise ValueError("per-step BatchNorm (bn_steps) is transductive only")
    norm = (
        StepBatchNorm2d(cout, bn_steps)
        if bn_steps
        else nn.BatchNorm2d(cout, track_running_stats=bn == "running")
    )
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), norm, nn.ReLU()]
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
        bn_steps: int = 0,
    ) -> None:
        body = OrderedDict(
            (
                f"conv{i + 1}",
                conv_block(
                    in_channels if i == 0 else channels, channels, i < blocks - 1, bn, bn_steps
                ),
            )
            for i in range(blocks)
        )
        for i in range(extra):
            body[f"extra{i + 1}"] = conv_block(channels, channels, False, bn, bn_steps)
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
    bn_steps: int = 0  # γ/β rows per inner step (BNWB); MAML++ sets inner.steps; 0 = shared

    def __post_init__(self) -> None:
        check(0 < self.channels <= 4096, "model.channels must be in [1, 4096]")
        check(0 < self.blocks <= 8, "model.blocks must be in [1, 8]")
        check(self.bn in BN_MODES, f"model.bn must be one of {BN_MODES}")
        check(0 <= self.extra <= 16, "model.extra must be in [0, 16]")
        check(0 <= self.bn_steps <= 10_000, "model.bn_steps must be in [0, 10000]")


@MODELS.register("conv4", Conv4Options, "Conv-4 (conv3×3-BN-ReLU-pool blocks; last pool in head)")
def conv4(options: Conv4Options, source: TaskSource, step_rows: int = 0) -> ConvNet:
    """``step_rows``: per-step BatchNorm rows the algorithm asks for (MAML++), unless
    ``bn_steps`` sets them."""
    input_shape, out_features = source.input_shape, source.out_features
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
        options.bn_steps or step_rows,
    )
