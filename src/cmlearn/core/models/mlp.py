"""Fully connected backbone (the sinusoid network of Finn et al. 2017: 1 → 40 → 40 → 1)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from cmlearn.core.models.cooperative import BodyHead
from cmlearn.core.models.layers import TaskLinear
from cmlearn.core.registry import MODELS, check

if TYPE_CHECKING:
    from cmlearn.core.tasks.batch import TaskSource


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


@dataclass(frozen=True)
class MLPOptions:
    hidden: tuple[int, ...] = (40, 40)

    def __post_init__(self) -> None:
        check(len(self.hidden) > 0, "model.hidden needs at least one layer")
        check(all(0 < h <= 1_000_000 for h in self.hidden), "model.hidden widths must be positive")


@MODELS.register("mlp", MLPOptions, "ReLU MLP on vector inputs (body = hidden layers)")
def mlp(options: MLPOptions, source: TaskSource, step_rows: int = 0) -> MLP:
    """No BatchNorm, so ``step_rows`` (MAML++'s per-step BatchNorm) does not apply."""
    input_shape, out_features = source.input_shape, source.out_features
    if len(input_shape) != 1:
        raise ValueError(f"model 'mlp' needs vector inputs, not examples of shape {input_shape}")
    return MLP(input_shape[0], options.hidden, out_features)
