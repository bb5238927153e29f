"""The meta-learner f^m = (ψ, θ) and the co-learner ϕ as one module with one parameter dict."""

from __future__ import annotations

from torch import Tensor, nn

HEADS = ("meta", "co")


class BodyHead(nn.Module):
    """A backbone split into ``body`` (ψ, an ``nn.Sequential``) and ``head`` (θ).

    The body's children name the feature points a co-learner can attach to.
    """

    task_batched = False  # True when every layer accepts per-task parameters (see TaskLinear)

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
