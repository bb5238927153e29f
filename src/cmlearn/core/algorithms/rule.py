"""The inner-loop rule: how (parameters, support set) become adapted parameters.

Every gradient-based algorithm here is one ``InnerRule``: which parameter groups step, with
which step size (fixed, zero, learned per element or per layer and step), first or second
order, whether each step is sharpness-aware (Sharp-MAML), and how the query losses of the
steps are weighted. ``adapt`` is the only inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Params = dict[str, Tensor]
LEARN_LR = ("none", "element", "layer-step")
GROUPS = ("body", "head", "colearner")
SAM_EPS = 1e-12  # SAM's guard against a zero gradient (Foret et al.; Sharp-MAML's sam.py)


@dataclass(frozen=True)
class Stage:
    """Where meta-training is: ``fraction`` of the steps done (derivative-order annealing) and
    the integer ``epoch`` (MAML++'s multi-step-loss weights). One value, so the outer step and
    the objective take one argument whatever the rule reads."""

    fraction: float = 0.0
    epoch: int = 0

    @classmethod
    def at(cls, step: int, total: int, epoch_steps: int) -> Stage:
        return cls(step / max(total, 1), step // epoch_steps)

    @classmethod
    def of(cls, progress: Stage | float) -> Stage:
        """A bare float is a fraction at epoch 0 (benchmarks and tests that pass ``0.0``)."""
        return progress if isinstance(progress, Stage) else cls(float(progress), 0)


@dataclass(frozen=True)
class InnerRule:
    """Data that defines an inner loop.

    steps: gradient steps on the support set (meta-training).
    lr: the base inner step size α.
    body_scale, head_scale: multipliers of α for ψ and θ; 0 freezes a group (ANIL, BOIL).
    first_order: drop the second-order term (FOMAML).
    learn_lr: ``none`` (fixed α), ``element`` (Meta-SGD: one learned α per parameter
        element) or ``layer-step`` (MAML++: one learned α per parameter tensor per step).
    multi_step_loss: MAML++'s per-step query losses, weighted by epoch as the released code
        does (``step_weights``) for the first ``msl_epochs`` epochs; the last step's loss only
        after (and from the start when ``msl_epochs`` is 0).
    msl_epochs: E, the epochs of the multi-step loss (MAML++: 10 Omniglot, 15 miniImageNet).
    first_order_until: MAML++'s derivative-order annealing: first order for this fraction of
        meta-training, second order after.
    adapt_bn: whether BatchNorm γ/β step in the inner loop (MAML and the CML code: yes;
        MAML++: no, they are outer-loop only).
    per_step_bn: one row of BatchNorm γ/β per inner step (MAML++'s BNWB), where the model
        has BatchNorm.
    sam_rho: Sharp-MAML's inner radius α_low: each training step is a SAM step (``adapt``);
        0 is plain gradient descent. Never used at evaluation.
    checkpoint: activation checkpointing of the inner loop under second order: each step keeps
        only its input parameters and is recomputed, trading compute for the memory of its
        graph. The same gradient. It costs about two more support passes per step (three with
        the inner SAM): the step's own ``autograd.grad`` already needs the discarded
        activations, so they are recomputed once in the forward and once in the meta-backward.
    """

    steps: int = 1
    lr: float = 0.01
    body_scale: float = 1.0
    head_scale: float = 1.0
    first_order: bool = False
    learn_lr: str = "none"
    multi_step_loss: bool = False
    msl_epochs: int = 0
    first_order_until: float = 0.0
    adapt_bn: bool = True
    per_step_bn: bool = False
    sam_rho: float = 0.0
    checkpoint: bool = False

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
        if not 0 <= self.msl_epochs <= 1_000_000:
            raise ValueError(f"inner.msl_epochs must be in [0, 1000000] (got {self.msl_epochs})")
        if not (math.isfinite(self.sam_rho) and self.sam_rho >= 0):
            raise ValueError("inner.sam_rho must be finite and not negative (0 = no SAM)")
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
    def follows_fraction(self) -> bool:
        """Whether the rule reads the fraction of training done (so the length of training is
        part of its schedule, and a resume may not change it)."""
        return self.first_order_until > 0 and not self.first_order

    @property
    def follows_epochs(self) -> bool:
        """Whether the rule reads the epoch (so the epoch length is part of its schedule)."""
        return self.multi_step_loss and self.msl_epochs > 0

    def is_first_order(self, stage: Stage) -> bool:
        return self.first_order or stage.fraction < self.first_order_until

    def step_weights(self, epoch: int, steps: int) -> list[float]:
        """Weights of the query losses after each of ``steps`` steps at ``epoch`` (MAML++'s
        ``get_per_step_loss_importance_vector`` in ``few_shot_learning_system.py``): with N
        steps, E =
        ``msl_epochs``, d = 1/(N·E) and floor m = 0.03/N, every non-final weight is
        max(1/N − e·d, m) and the final one min(1/N + e·(N−1)·d, 1 − (N−1)·m); from epoch E
        on, the final step's loss alone."""
        final_only = [0.0] * (steps - 1) + [1.0]
        if not self.multi_step_loss or steps == 1 or epoch >= self.msl_epochs:
            return final_only
        n = steps
        decay, floor = 1.0 / (n * self.msl_epochs), 0.03 / n
        early = max(1.0 / n - epoch * decay, floor)
        final = min(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
        return [early] * (n - 1) + [final]


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
    sam_rho: float = 0.0,
) -> list[Params]:
    """Take ``steps`` gradient steps on ``loss_fn(params, step)`` (per-task losses ``[T]``;
    ``step`` lets per-step parameters such as MAML++'s BatchNorm rows be picked).

    ``params`` carry a leading task dimension, so the gradient of the summed task losses is
    every task's own gradient at once, whichever strategy runs the forward pass. Returns the
    parameters after each step (the last is the adapted model). Second order keeps the graph
    (``create_graph``) so the outer loss differentiates through the steps.

    ``sam_rho > 0`` makes every step a SAM step (Sharp-MAML's inner loop, Abbas et al. 2022): the
    gradient is taken again at φ + ε, ε = ρ·g/(‖g‖₂ + 1e-12) with each task's own norm over
    all its adapted tensors, and the step goes from φ. It is an argument, not read from
    ``rule``, so that evaluation (which never uses SAM) cannot pick it up by accident.
    """
    names = list(sizes)

    def one_step(params: Params, step: int) -> Params:
        grads = _gradient(loss_fn, params, names, step, first_order)
        if sam_rho > 0:
            grads = _sharpness_gradient(loss_fn, params, names, step, first_order, grads, sam_rho)
        params = dict(params)
        for name, g in zip(names, grads, strict=True):
            params[name] = params[name] - rule.step_size(sizes[name], step) * g
        return params

    trajectory = []
    for step in range(steps):
        if rule.checkpoint and not first_order:  # first order keeps no inner graph anyway
            params = checkpoint(one_step, params, step, use_reentrant=False)
        else:
            params = one_step(params, step)
        trajectory.append(params)
    return trajectory


def _gradient(
    loss_fn: Callable[[Params, int], Tensor],
    params: Params,
    names: list[str],
    step: int,
    first_order: bool,
) -> tuple[Tensor, ...]:
    loss = loss_fn(params, step).sum()
    return torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order)


def sam_perturbation(grads: tuple[Tensor, ...] | list[Tensor], rho: float) -> list[Tensor]:
    """ε = ρ·g/(‖g‖₂ + 1e-12) per task: the norm runs over every tensor's elements but not
    over the leading task dimension, so each task is perturbed by exactly ρ. ``vector_norm``
    (not a square root of squares) keeps the second-order gradient finite at g = 0."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    scale = rho / (torch.linalg.vector_norm(norms, dim=0) + SAM_EPS)  # [T]
    return [g * scale.view(-1, *(1,) * (g.dim() - 1)) for g in grads]


def _sharpness_gradient(
    loss_fn: Callable[[Params, int], Tensor],
    params: Params,
    names: list[str],
    step: int,
    first_order: bool,
    grads: tuple[Tensor, ...],
    rho: float,
) -> tuple[Tensor, ...]:
    """g̃ = ∇L(φ + ε): a fresh forward at the perturbed point. With second order both
    gradients keep their graph, so the meta-gradient runs through ε as well."""
    eps = sam_perturbation(grads, rho)
    perturbed = dict(params)
    for name, e in zip(names, eps, strict=True):
        perturbed[name] = params[name] + e
    return _gradient(loss_fn, perturbed, names, step, first_order)
