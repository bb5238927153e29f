"""Co-learner heads built for the shape of the feature they read (paper §2)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from cmlearn.models.conv import BN_MODES, conv_block
from cmlearn.models.layers import TaskLinear
from cmlearn.registry import COLEARNERS, check


def build_colearner(
    feature_shape: torch.Size | tuple[int, ...],
    out_features: int,
    hidden: tuple[int, ...] = (40,),
    conv_layers: int = 2,
    bn: str = "transductive",
) -> nn.Module:
    """A fresh co-learner ϕ for features of ``feature_shape`` (without the batch dimension).

    - vector features ``(d,)``: an MLP with ReLU hidden layers ``hidden`` and a linear output
      (sinusoid: one hidden layer of 40; graphs: one of 16);
    - feature maps ``(C, H, W)``: Conv(k) of the paper's App. C, ``conv_layers`` 3×3 conv
      blocks with a 2×2 max-pool after the last one (a bare pool for k = 0), then a linear
      classifier (the official code's ``CoLearner`` is Conv(2)).
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
        blocks = [conv_block(c, c, i == conv_layers - 1, bn) for i in range(conv_layers)]
        if conv_layers == 0:
            blocks = [nn.MaxPool2d(2)]
        flat = c * (h // 2) * (w // 2)
        if flat == 0:
            raise ValueError(f"a {h}×{w} feature map is too small for the co-learner's pool")
        return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(flat, out_features))
    raise ValueError(f"no co-learner for features of shape {tuple(feature_shape)}")


@dataclass(frozen=True)
class MLPHeadOptions:
    hidden: tuple[int, ...] = (40,)

    def __post_init__(self) -> None:
        check(
            all(0 < h <= 1_000_000 for h in self.hidden), "colearner.hidden widths must be positive"
        )


@dataclass(frozen=True)
class ConvHeadOptions:
    layers: int = 2  # Conv(k) of the paper's Table 8; 2 is the main setting
    bn: str = "transductive"

    def __post_init__(self) -> None:
        check(0 <= self.layers <= 8, "colearner.layers must be in [0, 8]")
        check(self.bn in BN_MODES, f"colearner.bn must be one of {BN_MODES}")


@COLEARNERS.register("mlp", MLPHeadOptions, "ReLU MLP head on vector features")
def mlp_head(
    options: MLPHeadOptions, feature_shape: tuple[int, ...], out_features: int
) -> nn.Module:
    if len(feature_shape) != 1:
        raise ValueError(
            f"co-learner 'mlp' reads vector features, but the feature point gives shape "
            f"{tuple(feature_shape)}; use colearner.head.name=conv"
        )
    return build_colearner(feature_shape, out_features, options.hidden)


@COLEARNERS.register("conv", ConvHeadOptions, "Conv(k)+FC head on feature maps (paper App. C)")
def conv_head(
    options: ConvHeadOptions, feature_shape: tuple[int, ...], out_features: int
) -> nn.Module:
    if len(feature_shape) != 3:
        raise ValueError(
            f"co-learner 'conv' reads feature maps, but the feature point gives shape "
            f"{tuple(feature_shape)}; use colearner.head.name=mlp"
        )
    return build_colearner(feature_shape, out_features, conv_layers=options.layers, bn=options.bn)
