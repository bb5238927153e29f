"""How far inner-loop adaptation moves each layer's representation (paper Fig. 3d, App. E).

Activations are read with forward hooks while ``Learner.evaluate`` runs, so the adaptation is
exactly the one evaluation uses (same rule, step sizes, steps and groups), with no second copy
of the inner loop. ``evaluate`` adapts with gradients on and scores the query set under
``torch.no_grad``; the hooks keep only the outputs seen with gradients off, i.e. the
adapted model's query pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks import TaskBatch

HEAD = "head"


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same ``n`` examples.

    ``x`` is ``[n, p]`` and ``y`` is ``[n, q]`` (other shapes are flattened per example). With
    column-centred features, CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F): 1 for representations equal
    up to rotation and isotropic scaling, 0 for unrelated ones. It is computed from whichever
    of the feature (p×q) or example (n×n) Gram matrices is smaller; both give the same value.
    NaN when either representation is constant over the examples (nothing to compare).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n = x.shape[0]
    if n < x.shape[1] + y.shape[1]:  # example Gram matrices: tr(KL) = ‖YᵀX‖²_F
        k, gram_y = x @ x.T, y @ y.T
        cross = (k * gram_y).sum()
        norm_x, norm_y = k.norm(), gram_y.norm()
    else:
        cross = (y.T @ x).square().sum()
        norm_x, norm_y = (x.T @ x).norm(), (y.T @ y).norm()
    denominator = (norm_x * norm_y).item()
    if denominator == 0.0:
        return float("nan")
    return min(max(cross.item() / denominator, 0.0), 1.0)  # clip rounding past the bounds


def layer_names(learner: Learner) -> list[str]:
    """The points compared: every child of the body, then the meta-learner head's output."""
    return [name for name, _ in learner.net.model.body.named_children()] + [HEAD]


def _layers(learner: Learner) -> dict[str, nn.Module]:
    body = dict(learner.net.model.body.named_children())
    return body | {HEAD: learner.net.model.head}


@contextmanager
def _recording(learner: Learner) -> Iterator[dict[str, list[Tensor]]]:
    """Collect each layer's outputs from forward passes run with gradients off."""
    store: dict[str, list[Tensor]] = {name: [] for name in layer_names(learner)}

    def hook(name: str):
        def keep(module: nn.Module, args: object, output: Tensor) -> None:
            if not torch.is_grad_enabled():
                store[name].append(output.detach())

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in _layers(learner).items()]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _single(store: dict[str, list[Tensor]], what: str) -> dict[str, Tensor]:
    """One ``[n, features]`` activation per layer, or a clear error if the pass was not seen
    exactly once (the engine's evaluation changed shape)."""
    counts = {name: len(outs) for name, outs in store.items()}
    if any(c != 1 for c in counts.values()):
        raise CmlearnError(f"cannot read the {what} activations (layer passes seen: {counts})")
    return {name: outs[0].flatten(1) for name, outs in store.items()}


def task_activations(
    learner: Learner, task: TaskBatch, steps: int, mode: str = "cml"
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, float]]:
    """Per-layer query activations of one task before and after adaptation, and the adapted
    model's query scores.

    ``task`` holds one task. The evaluation runs as the ``loop`` strategy (one task per
    forward pass, the same numbers as the batched ones) so every hook sees ``[n, ...]``.
    """
    if task.n_tasks != 1:
        raise ValueError("task_activations takes a batch of exactly one task")
    with torch.no_grad(), _recording(learner) as store:
        learner.net(task.query_x[0])
    before = _single(store, "pre-adaptation")
    looped = dataclasses.replace(learner, strategy="loop")
    with _recording(learner) as store:
        result = looped.evaluate(task, mode, steps or None)
    after = _single(store, "adapted")
    scores = {k: float(v[0]) for k, v in result.items() if k in ("loss", "accuracy")}
    return before, after, scores


def cka_by_layer(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    return {name: linear_cka(before[name], after[name]) for name in before}
