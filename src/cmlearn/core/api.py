"""CML on any ``nn.Module``: split it into body and head, attach a co-learner, build a learner.

``meta_learner(model, tasks, algorithm=…, colearner=…)`` is the whole route: cmlearn wraps
your module into its body/head model (``models.BodyHead``) and ``models.Cooperative``, probes
the shape of the features the co-learner reads on a real input, and returns an
``engine.Learner`` with the batched (``meta_loss``, ``evaluate``) and functional
(``functional``) idioms. Everything here is torch only.

BatchNorm: layers in training mode use the batch's statistics in the inner loop and on the
query set (transductive, as MAML's and every reference code's); BatchNorm with running
statistics (``track_running_stats=True``) needs ``strategy="loop"`` and is updated once per
forward. ``evaluate`` puts nothing in eval mode: call ``learner.net.eval()`` yourself for
running statistics at test time (``cmlearn.fit`` and ``cmlearn eval`` do).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cmlearn.core.algorithms import ALGORITHMS, algorithm_rule
from cmlearn.core.algorithms.rule import InnerRule
from cmlearn.core.cml import CO_MODES, CoLearnerSpec
from cmlearn.core.engine import LOSSES, STRATEGIES, Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.models.colearner import (
    ConvHeadOptions,
    MLPHeadOptions,
    ResNetHeadOptions,
    conv_head,
    mlp_head,
    resnet_head,
)
from cmlearn.core.models.cooperative import BodyHead, Cooperative, example_input, feature_shape
from cmlearn.core.tasks.batch import TaskBatch, seeded

# co-learner heads by name: (builder, options); "auto" is mlp on vectors, conv on maps
COLEARNER_HEADS: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "mlp": (mlp_head, MLPHeadOptions),
    "conv": (conv_head, ConvHeadOptions),
    "resnet": (resnet_head, ResNetHeadOptions),
}


class SplitModel(BodyHead):
    """A user's module split into body and head (``split_model``): ``head(body(x))`` is the
    module's own output. Runs through ``functional_call`` (strategies ``loop`` and ``vmap``)."""


def split_model(module: nn.Module, head: str = "", example: Tensor | None = None) -> BodyHead:
    """``module`` as cmlearn's body/head model; the module itself is left untouched (a copy).

    ``head`` names the submodule that is the head θ (a child's name or a dotted path such as
    ``"classifier.2"``); the default is the module's **last registered child**. Everything
    else is the body ψ, and the co-learner reads the head's input.

    - An ``nn.Sequential`` is cut at ``head``: the body is the children before it, the head is
      it and every child after it (the body's children are then feature points, ``point``).
    - Any other module: the body is the module with the head replaced by ``nn.Identity``, so
      its ``forward`` must end with the head. Given an ``example`` input, this is checked:
      the split model must reproduce the module's output.

    Example: ``cmlearn.split_model(my_cnn, head="classifier").head`` is the classifier.
    """
    if isinstance(module, BodyHead):
        return module
    if not isinstance(module, nn.Module):
        raise CmlearnError(f"the model must be an nn.Module, not {type(module).__name__}")
    own = copy.deepcopy(module)
    children = [name for name, _ in own.named_children()]
    if not children:
        raise CmlearnError(f"{type(module).__name__} has no submodules to split into body and head")
    head = head or children[-1]
    if isinstance(own, nn.Sequential) and head in children:
        at = children.index(head)
        if at == 0:
            raise CmlearnError(f"head {head!r} is the first layer: the body would be empty")
        layers = list(own.named_children())
        tail = layers[at:]
        body = nn.Sequential(OrderedDict(layers[:at]))
        top = tail[0][1] if len(tail) == 1 else nn.Sequential(OrderedDict(tail))
        split = SplitModel(body, top)
    else:
        parent_path, _, leaf = head.rpartition(".")
        try:
            parent = own.get_submodule(parent_path)
            top = parent.get_submodule(leaf)
        except AttributeError:
            raise CmlearnError(
                f"{type(module).__name__} has no submodule {head!r} to be the head; its "
                f"children: {', '.join(children)}"
            ) from None
        setattr(parent, leaf, nn.Identity())
        split = SplitModel(nn.Sequential(OrderedDict(net=own)), top)
    if example is not None:
        _check_split(module, split, head, example)
    return split


def _check_split(module: nn.Module, split: BodyHead, head: str, example: Tensor) -> None:
    """The split model must compute the module's output (eval mode, no running update)."""
    modes = [(m, m.training) for m in (module, split)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            want, got = module(example), split(example)
    finally:
        for m, was in modes:
            m.train(was)
    if not isinstance(want, Tensor) or want.shape != got.shape or not torch.allclose(want, got):
        raise CmlearnError(
            f"{type(module).__name__}.forward does not end with its head {head!r}: "
            "head(body(x)) differs from the module's output; name the last layer with head=…"
        )


def colearner_for(
    head: str | nn.Module | Callable[..., nn.Module],
    shape: tuple[int, ...],
    out_features: int,
    options: dict | None = None,
) -> nn.Module:
    """A co-learner ϕ for features of ``shape``: by name (``mlp``: the paper's ReLU MLP on
    vectors, options ``hidden``; ``conv``: its Conv(k)+FC on maps, options ``layers`` (k),
    ``bn``, ``pool``; ``resnet``; ``auto``: mlp on vectors, conv on maps), your own module
    (used as it is), or a callable ``(feature_shape, out_features) -> nn.Module``."""
    if isinstance(head, nn.Module):
        return head
    if callable(head):
        return head(shape, out_features, **(options or {}))
    if head == "auto":
        head = "mlp" if len(shape) == 1 else "conv"
    if head not in COLEARNER_HEADS:
        raise CmlearnError(
            f"unknown co-learner head {head!r}; choose from auto, {', '.join(COLEARNER_HEADS)}, "
            "or pass a module"
        )
    build, kind = COLEARNER_HEADS[head]
    try:
        return build(
            kind(**_typed(kind, options or {}, f"co-learner {head!r}")), shape, out_features
        )
    except ValueError as err:
        raise CmlearnError(str(err)) from None


def _typed(kind: type, options: dict, what: str) -> dict:
    """``options`` for dataclass ``kind``; an unknown key is one line listing the known."""
    known = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise CmlearnError(f"{what} has no option {unknown[0]!r}; known: {', '.join(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def inner_rule(algorithm: str = "maml", **options: Any) -> InnerRule:
    """The inner loop of ``algorithm`` (maml, fomaml, anil, boil, metasgd, mamlpp) with
    ``InnerRule`` fields as keywords (``steps``, ``lr``, ``first_order``, ``sam_rho``: Sharp-MAML's
    inner radius, …); an unknown name or field is one line listing the choices. Example:
    ``cmlearn.inner_rule("anil", steps=5, lr=0.4)``."""
    if algorithm not in ALGORITHMS:
        raise CmlearnError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    options = _typed(InnerRule, options, "the inner loop")
    try:
        return dataclasses.replace(algorithm_rule(algorithm, InnerRule()), **options)
    except (TypeError, ValueError) as err:
        raise CmlearnError(str(err)) from None


def meta_learner(
    model: nn.Module,
    tasks: Any,
    *,
    algorithm: str = "maml",
    colearner: str = "none",
    gamma: float = 0.2,
    steps: int = 1,
    lr: float = 0.01,
    head: str = "",
    point: str = "",
    colearner_head: str | nn.Module | Callable[..., nn.Module] = "auto",
    colearner_options: dict | None = None,
    rho_low: float = 0.0,
    loss: str = "",
    out_features: int = 0,
    strategy: str = "auto",
    seed: int = 0,
    device: torch.device | str | None = None,
    **inner: Any,
) -> Learner:
    """Meta-learn ``model`` with ``algorithm`` and a co-learner control; returns the learner.

    - ``model``: any ``nn.Module``; ``head`` names its head (default: its last registered
      child; see ``split_model``). ``point`` (``nn.Sequential`` models) is the body child the
      co-learner reads; default: the head's input.
    - ``tasks``: a task source (``few_shot``, ``regression``, yours), a ``TaskBatch`` or an
      input batch ``[n, …]``: one input is run to probe the co-learner's feature shape; a
      source also gives the loss (``ce``/``mse``) and ``out_features``.
    - ``algorithm``: maml, fomaml, anil, boil, metasgd, mamlpp; ``steps`` and ``lr`` of the
      inner loop; ``rho_low`` Sharp-MAML's inner SAM radius; other ``InnerRule`` fields as
      keywords (e.g. ``first_order=True``).
    - ``colearner``: ``none`` (the base algorithm: MAML), ``cml``, ``random`` (a frozen random
      co-learner), ``cl`` (co-learner adapted in the inner loop); ``gamma`` its weight γ;
      ``colearner_head``: ``auto``, ``mlp``, ``conv`` (options ``layers``…), ``resnet`` or
      your module. ϕ is initialised from the stream ``("colearner", seed)`` and the global
      generator is left as it was, so CML with γ = 0 computes exactly MAML's losses.
    - ``strategy``: ``auto`` (batched for cmlearn's MLPs, else loop), ``loop``, ``vmap``,
      ``batched``; the resolved one is ``learner.strategy``.

    The result's ``meta_loss(batch)`` is the outer loss, ``evaluate(batch, "maml")`` adapts
    to test tasks (``"cml-dagger-code"``: CML†), ``functional()`` the pure form, and
    ``meta_parameters()`` what an optimiser steps.

    BatchNorm in training mode uses the batch's statistics in the inner loop and on the query
    set (transductive, as MAML's code): build yours with ``track_running_stats=False``. With
    running statistics it needs ``strategy="loop"``; put ``learner.net.eval()`` around your
    own test-time ``evaluate`` to use them (``fit`` and ``cmlearn eval`` do). Example::

        tasks = cmlearn.few_shot(X, y, ways=5, shots=1)
        learner = cmlearn.meta_learner(MyCNN(), tasks, colearner="cml", gamma=0.5)
        opt = torch.optim.Adam(learner.meta_parameters(), 1e-3)
        loss, terms = learner.meta_loss(tasks.sample(4, cmlearn.generator("train", 0, 0)))
    """
    if colearner not in CO_MODES:
        raise CmlearnError(f"unknown co-learner {colearner!r}; choose from {', '.join(CO_MODES)}")
    if strategy not in STRATEGIES:
        raise CmlearnError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not (gamma >= 0 and gamma != float("inf")):
        raise CmlearnError(f"gamma must be a finite non-negative number (got {gamma})")
    if "rho_up" in inner:
        raise CmlearnError(
            "rho_up (Sharp-MAML's outer SAM radius) perturbs the optimiser's step, not the "
            "meta-loss: use cmlearn.fit(..., rho_up=…), or SAM around your own optimiser"
        )
    rule = inner_rule(algorithm, steps=steps, lr=lr, sam_rho=rho_low, **inner)
    example, loss, out_features = _probe_input(tasks, loss, out_features)
    split = split_model(model, head, example)
    if rule.per_step_bn and not any(getattr(m, "per_step", False) for m in split.modules()):
        rule = dataclasses.replace(rule, per_step_bn=False)  # MAML++'s rows: cmlearn's layers
    try:
        phi = None
        if colearner != "none":
            shape = feature_shape(split, point, example)
            with seeded("colearner", seed):
                phi = colearner_for(colearner_head, shape, out_features, colearner_options)
        net = Cooperative(split, phi, point)
    except ValueError as err:
        raise CmlearnError(str(err)) from None
    if device is not None:
        net = net.to(device)
    return Learner.create(net, rule, CoLearnerSpec(colearner, gamma), loss, strategy)


def _probe_input(tasks: Any, loss: str, out_features: int) -> tuple[Tensor, str, int]:
    """(a CPU input batch, the loss, the output width) from a source, a batch or inputs."""
    if loss and loss not in LOSSES:
        raise CmlearnError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if hasattr(tasks, "sample") and hasattr(tasks, "out_features"):
        return example_input(tasks), loss or tasks.loss, out_features or tasks.out_features
    if isinstance(tasks, TaskBatch):
        y = tasks.support_y
        classes = not (y.dtype.is_floating_point or y.dtype.is_complex)
        loss = loss or ("ce" if classes else "mse")
        if not out_features:
            out_features = int(y.max()) + 1 if loss == "ce" else y.shape[-1]
        return tasks.support_x[0].cpu(), loss, out_features
    if isinstance(tasks, Tensor):
        if not (loss and out_features):
            raise CmlearnError("with an input tensor for the probe, give loss= and out_features=")
        return tasks.cpu(), loss, out_features
    raise CmlearnError(
        "tasks must be a task source (cmlearn.few_shot, cmlearn.regression), a TaskBatch or an "
        f"input batch, not {type(tasks).__name__}"
    )
