"""The inner-loop rule: how (parameters, support set) become adapted parameters.

Every gradient-based algorithm here is one ``InnerRule``: which parameter groups step, with
which step size (fixed, zero, learned per element or per layer and step), first or second
order, and how the query losses of the steps are weighted. ``adapt`` is the only inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
LEARN_LR = ("none", "element", "layer-step")
GROUPS = ("body", "head", "colearner")


@dataclass(frozen=True)
class InnerRule:
    """Data that defines an inner loop.

    steps: gradient steps on the support set (meta-training).
    lr: the base inner step size α.
    body_scale, head_scale: multipliers of α for ψ and θ; 0 freezes a group (ANIL, BOIL).
    first_order: drop the second-order term (FOMAML).
    learn_lr: ``none`` (fixed α), ``element`` (Meta-SGD: one learned α per parameter
        element) or ``layer-step`` (MAML++: one learned α per parameter tensor per step).
    multi_step_loss: MAML++'s per-step query losses, annealed towards the last step over the
        first ``msl_anneal`` fraction of meta-training.
    first_order_until: MAML++'s derivative-order annealing: first order for this fraction of
        meta-training, second order after.
    adapt_bn: whether BatchNorm γ/β step in the inner loop (MAML and the CML code: yes;
        MAML++: no, they are outer-loop only).
    per_step_bn: one row of BatchNorm γ/β per inner step (MAML++'s BNWB), where the model
        has BatchNorm.
    """

    steps: int = 1
    lr: float = 0.01
    body_scale: float = 1.0
    head_scale: float = 1.0
    first_order: bool = False
    learn_lr: str = "none"
    multi_step_loss: bool = False
    msl_anneal: float = 0.0
    first_order_until: float = 0.0
    adapt_bn: bool = True
    per_step_bn: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 10_000:
            raise ValueError(f"inner.steps must be in [1, 10000] (got {self.steps})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(
                "inner.lr must be a finite positive number (freeze a group with *_scale=0)"
            )
        if not all(
            math.isfinite(v) for v in (self.body_scale, self.head_scale, self.first_order_until)
        ):
            raise ValueError("inner scales and first_order_until must be finite")
        if self.msl_anneal < 0:
            raise ValueError("inner.msl_anneal must not be negative")
        if self.learn_lr not in LEARN_LR:
            raise ValueError(f"inner.learn_lr must be one of {LEARN_LR} (got {self.learn_lr!r})")

    def scale(self, group: str, colearner_adapts: bool) -> float:
        return {"body": self.body_scale, "head": self.head_scale}.get(
            group, 1.0 if colearner_adapts else 0.0
        )

    def init_step_sizes(
        self, params: Params, colearner_adapts: bool = False, bn: frozenset[str] = frozenset()
    ) -> Params:
        """Step sizes for the parameters that adapt; a parameter absent here never moves.
        ``bn`` names the BatchNorm affine parameters (frozen unless ``adapt_bn``)."""
        sizes = {}
        for name, p in params.items():
            lr = self.lr * self.scale(group_of(name), colearner_adapts)
            if lr == 0.0 or (name in bn and not self.adapt_bn):
                continue
            p = p.detach()  # step sizes live on the parameter's device
            if self.learn_lr == "element":
                sizes[name] = torch.full_like(p, lr)
            elif self.learn_lr == "layer-step":
                sizes[name] = p.new_full((self.steps,) + (1,) * p.dim(), lr)
            else:
                sizes[name] = p.new_tensor(lr)
        return sizes

    def step_size(self, size: Tensor, step: int) -> Tensor:
        if self.learn_lr == "layer-step":
            return size[min(step, size.shape[0] - 1)]
        return size

    @property
    def scheduled(self) -> bool:
        """Whether the rule changes with training progress (so the length of training is part
        of the schedule, and a resume may not change it)."""
        return (self.multi_step_loss and self.msl_anneal > 0) or self.first_order_until > 0

    def is_first_order(self, progress: float) -> bool:
        return self.first_order or progress < self.first_order_until

    def step_weights(self, progress: float, steps: int) -> list[float]:
        """Weights of the query losses after each of ``steps`` steps (MAML++ MSL)."""
        if not self.multi_step_loss or steps == 1:
            return [0.0] * (steps - 1) + [1.0]
        keep = 1.0 - min(progress / self.msl_anneal, 1.0) if self.msl_anneal > 0 else 0.0
        early = keep / steps
        return [early] * (steps - 1) + [1.0 - early * (steps - 1)]


def group_of(name: str) -> str:
    """``model.body.*`` → body, ``model.head.*`` → head, ``colearner.*`` → colearner."""
    parts = name.split(".")
    return parts[1] if parts[0] == "model" else parts[0]


def adapt(
    params: Params,
    sizes: Params,
    rule: InnerRule,
    loss_fn: Callable[[Params, int], Tensor],
    steps: int,
    first_order: bool,
) -> list[Params]:
    """Take ``steps`` gradient steps on ``loss_fn(params, step)`` (per-task losses ``[T]``;
    ``step`` lets per-step parameters such as MAML++'s BatchNorm rows be picked).

    ``params`` carry a leading task dimension, so the gradient of the summed task losses is
    every task's own gradient at once, whichever strategy runs the forward pass. Returns the
    parameters after each step (the last is the adapted model). Second order keeps the graph
    (``create_graph``) so the outer loss differentiates through the steps.
    """
    names = list(sizes)
    trajectory = []
    for step in range(steps):
        loss = loss_fn(params, step).sum()
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order)
        params = dict(params)
        for name, g in zip(names, grads, strict=True):
            params[name] = params[name] - rule.step_size(sizes[name], step) * g
        trajectory.append(params)
    return trajectory
