"""Fully connected backbone (the sinusoid network of Finn et al. 2017: 1 → 40 → 40 → 1)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cmlearn.models.cooperative import BodyHead
from cmlearn.models.layers import TaskLinear


class MLP(BodyHead):
    """ReLU MLP; body = hidden layers (children ``fc1, relu1, fc2, relu2, …``), head = output."""

    task_batched = True

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int) -> None:
        layers: dict[str, nn.Module] = {}
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = TaskLinear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            width = h
        super().__init__(nn.Sequential(OrderedDict(layers)), TaskLinear(width, out_features))
