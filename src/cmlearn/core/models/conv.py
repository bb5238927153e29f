"""The Conv-4 backbone of MAML / CML (paper §2, official ``maml/model_cml.py``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from cmlearn.core.models.cooperative import BodyHead
from cmlearn.core.models.layers import BN_MODES, Conv2d, norm
from cmlearn.core.registry import MODELS, check

if TYPE_CHECKING:
    from cmlearn.core.tasks.batch import TaskSource

__all__ = ["BN_MODES", "POOLS", "ConvNet", "conv_block", "conv_k_fc"]
POOLS = ("max", "avg")
# (in channels, out channels, pool, bn, bn_steps) -> one conv block (``conv_block`` or ResNet's)
Block = Callable[[int, int, bool, str, int], nn.Sequential]


def conv_block(cin: int, cout: int, pool: bool, bn: str, bn_steps: int = 0) -> nn.Sequential:
    """3×3 conv (with bias) → BatchNorm (``layers.norm``) → ReLU (→ 2×2 max-pool).

    A pooled block runs the pool before the ReLU: max and ReLU commute, so the output, the
    gradients and the second derivatives are the same bit for bit (tested), and the ReLU and
    its backward see a quarter of the elements (a Conv-4 meta-step about 4 % faster on CPU).
    """
    layers = [Conv2d(cin, cout, 3, padding=1), norm(cout, bn, bn_steps)]
    layers += [nn.MaxPool2d(2), nn.ReLU()] if pool else [nn.ReLU()]
    return nn.Sequential(*layers)


def conv_k_fc(
    channels: int,
    size: tuple[int, int],
    out_features: int,
    convs: int = 0,
    bn: str = "transductive",
    bn_steps: int = 0,
    pool: str = "max",
    width: int = 0,
    block: Block = conv_block,
) -> nn.Sequential:
    """Conv(k)+FC on a ``channels``×H×W map (``size`` = (H, W)): the paper's App. B/C head.

    ``convs`` (k) blocks of ``width`` channels (0: ``channels``, so the map's width carries
    on), then the pool, flatten and one linear layer. ``pool="max"`` is the official code's:
    one 2×2 max-pool, at the end of the last block (conv → BN → pool → ReLU), or bare for
    k = 0. So Conv(0) = pool, FC; Conv(1) = conv+pool, FC; Conv(2) = conv, conv+pool, FC (the
    official ``CoLearner``); Conv(k) = k − 1 unpooled blocks, one pooled block, FC. Exactly
    one pool at every depth keeps the FC at c·⌊H/2⌋·⌊W/2⌋ inputs (1600 on Conv-4's 64×10×10
    map), so depths differ only in their convs. ``pool="avg"`` is a global average pool
    after the last block (ResNet's head): the FC reads c inputs whatever the image size.

    Conv-4's own head θ (``ConvNet``) and the ``conv`` co-learner ϕ are both built here, so
    with the same k they are the same structure (CML paper, App. B, Table 7).
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose from {POOLS}")
    h, w = size
    width = width or channels
    layers: list[nn.Module] = [
        block(channels if i == 0 else width, width, pool == "max" and i == convs - 1, bn, bn_steps)
        for i in range(convs)
    ]
    c = width if convs else channels
    if pool == "max":
        if convs == 0:
            layers.append(nn.MaxPool2d(2))
        flat = c * (h // 2) * (w // 2)
        if flat == 0:
            raise ValueError(f"a {h}×{w} feature map is too small for a 2×2 pool")
    else:
        layers.append(nn.AdaptiveAvgPool2d(1))
        flat = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, out_features))


class ConvNet(BodyHead):
    """``blocks`` conv blocks; the last has no pool, which moves into the head (as in the code),
    so a co-learner reads the last block's pre-pool feature map.

    Body children are ``conv1 … convN`` (then ``extra1 …``: More-MAML's additional unpooled
    blocks, CML paper Table 4); the default co-learner point is the last of them.

    ``head_convs`` = k makes θ Conv(k)+FC on the pre-pool map (``conv_k_fc``, the co-learner's
    own structure: the CML paper's Table 7 same-structure setting); 0 is the standard head,
    max-pool → flatten → linear. The head's convs are ``model.head.*`` parameters: the inner
    loop adapts them with the head's step size (MAML: α; BOIL: frozen; ANIL: the only ones).
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
        head_convs: int = 0,
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
        for _ in range(blocks - 1):  # floor division at every pool, as max_pool2d does
            side //= 2
        if side < 2:
            raise ValueError(f"{image_size}px images are too small for {blocks} pooled blocks")
        head = conv_k_fc(channels, (side, side), n_way, head_convs, bn, bn_steps)
        super().__init__(nn.Sequential(body), head)


@dataclass(frozen=True)
class Conv4Options:
    channels: int = 64
    blocks: int = 4
    bn: str = "transductive"  # transductive (MAML's batch statistics) | running
    extra: int = 0  # More-MAML: unpooled conv blocks added after the last block (3 → 232K)
    bn_steps: int = 0  # γ/β rows per inner step (BNWB); MAML++ sets inner.steps; 0 = shared
    head_convs: int = 0  # θ = Conv(k)+FC, the co-learner's structure (Table 7); 0 = pool + FC

    def __post_init__(self) -> None:
        check(0 < self.channels <= 4096, "model.channels must be in [1, 4096]")
        check(0 < self.blocks <= 8, "model.blocks must be in [1, 8]")
        check(self.bn in BN_MODES, f"model.bn must be one of {', '.join(BN_MODES)}")
        check(0 <= self.extra <= 16, "model.extra must be in [0, 16]")
        check(0 <= self.bn_steps <= 10_000, "model.bn_steps must be in [0, 10000]")
        check(0 <= self.head_convs <= 8, "model.head_convs must be in [0, 8]")


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
        options.head_convs,
    )
