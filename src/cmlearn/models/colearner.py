"""Co-learner heads built for the shape of the feature they read (paper §2)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cmlearn.models.conv import conv_block
from cmlearn.models.layers import TaskLinear


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
      blocks with a 2×2 max-pool after the last one, then a linear classifier (the code's
      ``CoLearner`` is Conv(2)).
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
        return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(flat, out_features))
    raise ValueError(f"no co-learner for features of shape {tuple(feature_shape)}")
