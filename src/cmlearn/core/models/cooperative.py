"""The meta-learner f^m = (ψ, θ) and the co-learner ϕ as one module with one parameter dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cmlearn.core.models.layers import PureStep, pure_step

HEADS = ("meta", "co")
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# ``functional_call(net, params, (x,), {"heads": heads})`` as a plain function of the parameters
PureForward = Callable[[Mapping[str, Tensor], Tensor, tuple[str, ...]], tuple[Tensor, ...]]


class BodyHead(nn.Module):
    """A backbone split into ``body`` (ψ, an ``nn.Sequential``) and ``head`` (θ).

    The body's children name the feature points a co-learner can attach to.
    """

    task_batched = False  # True when every layer accepts per-task parameters (see TaskLinear)
    vmappable = True  # False when the forward reads its input's values on the host

    def __init__(self, body: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Cooperative(nn.Module):
    """``model`` (ψ, θ) plus an optional ``colearner`` (ϕ) reading the body at ``point``.

    Parameter names start with ``model.body.``, ``model.head.`` or ``colearner.``: the groups
    the inner-loop rule gives step sizes to. ``forward`` returns the requested heads' outputs
    in order, so a pass that does not need the co-learner never runs it.
    """

    def __init__(
        self, model: BodyHead, colearner: nn.Module | None = None, point: str = ""
    ) -> None:
        super().__init__()
        if not (hasattr(model, "body") and hasattr(model, "head")):
            raise ValueError(
                f"{type(model).__name__} is not split into body and head: wrap it with "
                "cmlearn.split_model(module, head=…) (cmlearn.meta_learner does)"
            )
        self.model = model
        self.colearner = colearner
        names = [name for name, _ in model.body.named_children()]
        self.point = point or names[-1]
        if self.point not in names:
            raise ValueError(f"unknown feature point {self.point!r}; the body has {names}")

    @property
    def task_batched(self) -> bool:
        co = self.colearner is None or getattr(self.colearner, "task_batched", False)
        return bool(self.model.task_batched and co)

    def features(self, x: Tensor) -> Tensor:
        """The body's activation at the co-learner's feature point."""
        return self._body(x, stop_at_point=True)[1]

    def _body(self, x: Tensor, stop_at_point: bool = False) -> tuple[Tensor, Tensor]:
        """(body output, activation at the feature point)."""
        feature = x
        for name, layer in self.model.body.named_children():
            x = layer(x)
            if name == self.point:
                feature = x
                if stop_at_point:
                    break
        return x, feature

    def forward(self, x: Tensor, heads: tuple[str, ...] = ("meta",)) -> tuple[Tensor, ...]:
        x, feature = self._body(x)
        out = {"meta": self.model.head(x) if "meta" in heads else None}
        if "co" in heads:
            if self.colearner is None:
                raise ValueError("this model has no co-learner")
            out["co"] = self.colearner(feature)
        return tuple(out[h] for h in heads)

    def pure_forward(self) -> PureForward | None:
        """``forward`` as a pure function of a parameter dict, where every layer has one
        (``layers.pure_step``: the MLP backbone and the MLP co-learner); None otherwise.

        It computes what ``functional_call(self, params, (x,), {"heads": heads})`` computes,
        with the same kernels (bit-identical), without swapping parameters into the modules.
        While any of the modules has a forward or backward hook it calls ``functional_call``,
        which runs them (checked on every call: hooks come and go, e.g. for the analysis).
        It holds this module's layers: rebuild it after replacing a submodule. Tied parameters
        (one tensor under two names) give None: ``functional_call`` gives every name of a
        tied tensor the value passed for one of them, a pure form reads each name.
        """
        if len(list(self.named_parameters(remove_duplicate=False))) != len(list(self.parameters())):
            return None
        body: list[tuple[bool, PureStep]] = []
        for name, layer in self.model.body.named_children():
            step = pure_step(layer, f"model.body.{name}.")
            if step is None:
                return None
            body.append((name == self.point, step))
        head = pure_step(self.model.head, "model.head.")
        co = None if self.colearner is None else pure_step(self.colearner, "colearner.")
        if head is None or (self.colearner is not None and co is None):
            return None
        hooks = [getattr(m, kind) for m in self.modules() for kind in HOOKS]

        def forward(
            params: Mapping[str, Tensor], x: Tensor, heads: tuple[str, ...] = ("meta",)
        ) -> tuple[Tensor, ...]:
            if any(hooks):  # 0.4 µs a call
                return functional_call(self, params, (x,), {"heads": heads})
            feature = x
            for at_point, step in body:
                x = step(params, x)
                if at_point:
                    feature = x
            out = {"meta": head(params, x) if "meta" in heads else None}
            if "co" in heads:
                if co is None:
                    raise ValueError("this model has no co-learner")
                out["co"] = co(params, feature)
            return tuple(out[h] for h in heads)

        return forward


def example_input(source) -> Tensor:
    """One real support set of ``source`` (``TaskSource``), on the CPU where models are built
    (the pool may be on the GPU): the input a probe runs."""
    from cmlearn.core.tasks.batch import generator

    return source.sample(1, generator("val", 0), "val").support_x[0].cpu()


def feature_shape(model: BodyHead, point: str, example: Tensor) -> tuple[int, ...]:
    """The shape (without the batch dimension) of ``model``'s body activation at ``point`` on
    ``example``: what a co-learner there reads. Run in eval mode, so no running statistics
    are touched, and the mode is restored."""
    probe = Cooperative(model, None, point)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tuple(probe.features(example).shape[1:])
    finally:
        model.train(was)


def parameter_counts(net: Cooperative) -> dict[str, int]:
    """Parameters of each part and of what each phase holds (CML paper Table 4).

    ``body`` ψ, ``head`` θ, ``colearner`` ϕ (0 without one); ``train``: everything meta-training
    holds (ψ, θ, ϕ); ``test``: the saved inference model (all of ``net.model``: ψ + θ, MAML's
    and CML's test-time network); ``test_dagger``: ψ + ϕ, what CML† predicts with (ψ alone
    without a co-learner). Per-step BatchNorm rows all count; inner step sizes (learned or
    not) are not parameters here.
    """

    def count(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    body, colearner = count(net.model.body), count(net.colearner)
    return {
        "body": body,
        "head": count(net.model.head),
        "colearner": colearner,
        "train": count(net),
        "test": count(net.model),
        "test_dagger": body + colearner,
    }
