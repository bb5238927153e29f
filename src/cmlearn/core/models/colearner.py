"""Co-learner heads built for the shape of the feature they read (paper §2).

- ``mlp``: vector features (sinusoid, graphs).
- ``conv``: Conv(k)+FC (``conv.conv_k_fc``), the paper's App. C family on Conv-4's 64×10×10
  pre-pool map; Conv(2), the default, is the official ``CoLearner`` (82,117 parameters at
  84 px, 5-way). One 2×2 max-pool ends the last block (bare for k = 0), so the FC reads 1,600
  inputs at every depth: Conv(k) = 8,005 + 37,056·k parameters.
- ``resnet``: the co-learner for ResNet-12, which the paper does not describe (Table 9).

Why ``resnet`` is Conv(2) at the map's width in ResNet's own layer style, then ResNet's head:
the paper's Conv(2) on Conv-4 is "two more body layers, then the meta-learner's head" (two
more 64→64 conv blocks of the body's kind, then Conv-4's head, 2×2 max-pool + FC). The same
rule on ResNet-12 gives two 640→640 3×3 convs (no bias, BN, LeakyReLU 0.1) and ResNet's head,
global average pool + FC. Matching the 640 channels keeps ϕ a continuation of ψ rather than a
bottleneck. Cost at 5-way: 2·(9·640² + 2·640) + 640·5 + 5 = 7,378,565 parameters at any image
size (the average pool makes the FC size-free), 59 % of the 12.42 M body, against Conv(2)'s
82,117 = 73 % of Conv-4's 113,088 body; in compute it is 5–6 % of the body's multiply-adds
(two convs on a 5×5 or 2×2 map against twelve at up to 84×84). A full residual block
(3 convs + 1×1 shortcut: 11,473,920) would nearly double the trained parameters. ``layers``,
``width`` (a narrower ϕ: first conv 640 → width) and ``pool`` (``max``: Conv-4's 2×2
max-pool + flatten) stay configurable. The ``conv`` co-learner also reads ResNet's map
(``pool=avg`` for a size-free FC), with biased convs and ReLU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from cmlearn.core.models.conv import POOLS, conv_k_fc
from cmlearn.core.models.layers import BN_MODES, TaskLinear, tlp_init
from cmlearn.core.models.resnet import plain_block
from cmlearn.core.registry import COLEARNERS, check


def build_colearner(
    feature_shape: torch.Size | tuple[int, ...],
    out_features: int,
    hidden: tuple[int, ...] = (40,),
    conv_layers: int = 2,
    bn: str = "transductive",
    pool: str = "max",
) -> nn.Module:
    """A fresh co-learner ϕ for features of ``feature_shape`` (without the batch dimension).

    - vector features ``(d,)``: an MLP with ReLU hidden layers ``hidden`` and a linear output
      (sinusoid: one hidden layer of 40; graphs: one of 16);
    - feature maps ``(C, H, W)``: Conv(k) of the paper's App. C, ``conv_layers`` 3×3 conv
      blocks with a 2×2 max-pool after the last one (a bare pool for k = 0), then a linear
      classifier (the official code's ``CoLearner`` is Conv(2)); ``pool="avg"``: a global
      average pool instead (``conv.conv_k_fc``).
    """
    if len(feature_shape) == 1:
        layers: dict[str, nn.Module] = {}
        width = feature_shape[0]
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = TaskLinear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            width = h
        layers["out"] = TaskLinear(width, out_features)
        net = nn.Sequential(OrderedDict(layers))
        net.task_batched = True
        return net
    if len(feature_shape) == 3:
        c, h, w = feature_shape
        return conv_k_fc(c, (h, w), out_features, conv_layers, bn, pool=pool)
    raise ValueError(f"no co-learner for features of shape {tuple(feature_shape)}")


INITS = ("torch", "tlp")


@dataclass(frozen=True)
class MLPHeadOptions:
    hidden: tuple[int, ...] = (40,)
    init: str = "torch"  # torch: nn.Linear's U(±1/√fan_in); tlp: TLP's U(±1/√fan_out)

    def __post_init__(self) -> None:
        check(
            all(0 < h <= 1_000_000 for h in self.hidden), "colearner.hidden widths must be positive"
        )
        check(self.init in INITS, f"colearner.init must be one of {', '.join(INITS)}")


@dataclass(frozen=True)
class ConvHeadOptions:
    layers: int = 2  # Conv(k) of the paper's Table 8; 2 is the main setting
    bn: str = "transductive"
    pool: str = "max"  # max: 2×2 max-pool in the last block (official); avg: global average

    def __post_init__(self) -> None:
        check(0 <= self.layers <= 8, "colearner.layers must be in [0, 8]")
        check(self.bn in BN_MODES, f"colearner.bn must be one of {BN_MODES}")
        check(self.pool in POOLS, f"colearner.pool must be one of {POOLS}")


@dataclass(frozen=True)
class ResNetHeadOptions(ConvHeadOptions):
    """``conv``'s options in ResNet's layer style; ``layers`` counts its 3×3 convs."""

    pool: str = "avg"  # avg: ResNet's head (global average pool); max: Conv-4's 2×2 max-pool
    width: int = 0  # the convs' channels; 0 = the feature map's (640 on ResNet-12)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.width <= 4096, "colearner.width must be in [0, 4096]")


@COLEARNERS.register("mlp", MLPHeadOptions, "ReLU MLP head on vector features")
def mlp_head(
    options: MLPHeadOptions, feature_shape: tuple[int, ...], out_features: int
) -> nn.Module:
    if len(feature_shape) != 1:
        raise ValueError(
            f"co-learner 'mlp' reads vector features, but the feature point gives shape "
            f"{tuple(feature_shape)}; use colearner.head.name=conv"
        )
    net = build_colearner(feature_shape, out_features, options.hidden)
    if options.init == "tlp":  # the graph models' own (TLP-FSNC's reset_parameters)
        tlp_init(net)
    return net


def _need_map(name: str, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``feature_shape`` if it is a (C, H, W) map, which the ``name`` co-learner reads."""
    if len(feature_shape) != 3:
        raise ValueError(
            f"co-learner {name!r} reads feature maps, but the feature point gives shape "
            f"{tuple(feature_shape)}; use colearner.head.name=mlp"
        )
    return tuple(feature_shape)


@COLEARNERS.register("conv", ConvHeadOptions, "Conv(k)+FC head on feature maps (paper App. C)")
def conv_head(
    options: ConvHeadOptions, feature_shape: tuple[int, ...], out_features: int
) -> nn.Module:
    _need_map("conv", feature_shape)
    return build_colearner(
        feature_shape, out_features, conv_layers=options.layers, bn=options.bn, pool=options.pool
    )


@COLEARNERS.register(
    "resnet", ResNetHeadOptions, "ResNet-style Conv(k) + global average pool + FC (ResNet-12)"
)
def resnet_head(
    options: ResNetHeadOptions, feature_shape: tuple[int, ...], out_features: int
) -> nn.Module:
    """Conv(k) of ResNet-12's layers (no-bias 3×3 conv → BN → LeakyReLU 0.1) at the map's
    width, then ResNet's head; see the module docstring for why."""
    c, h, w = _need_map("resnet", feature_shape)
    return conv_k_fc(
        c,
        (h, w),
        out_features,
        options.layers,
        options.bn,
        pool=options.pool,
        width=options.width,
        block=plain_block,
    )
