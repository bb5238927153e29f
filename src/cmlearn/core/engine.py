"""The functional core: one meta-objective for every algorithm and co-learner control.

A meta-training step is a pure function of tensors::

    parameters (ψ, θ, ϕ), step sizes, a TaskBatch  ->  outer loss, per-task metrics

Parameters are expanded to a leading task dimension (a free view), so one
``autograd.grad`` of the summed task losses gives each task its own inner gradient. Only the
forward pass over tasks depends on the strategy:

- ``batched``: the model takes per-task parameters itself (``TaskLinear``): one kernel per
  layer for the whole meta-batch; fastest for MLPs.
- ``vmap``: ``torch.func.vmap`` of the model's forward over tasks; any vmappable model.
- ``loop``: a Python loop over tasks; needed for BatchNorm with running statistics and the
  fastest for conv nets on CPU.

Whatever the strategy, the model runs as a pure function of its parameter tensors where it has
one (``Cooperative.pure_forward``: MLP backbones and co-learners), and through
``functional_call`` otherwise (any user model). Both compute the same thing with the same
kernels; the pure form skips swapping every parameter into the module and back on each call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from cmlearn.core.algorithms.rule import InnerRule, Params, Stage, adapt, group_of
from cmlearn.core.cml import CoLearnerSpec, eval_plan
from cmlearn.core.errors import CmlearnError
from cmlearn.core.models.cooperative import Cooperative
from cmlearn.core.tasks.batch import TaskBatch

STRATEGIES = ("auto", "batched", "vmap", "loop")
LOSSES = ("mse", "ce")
# The network as a function of (parameters, input, heads) -> the heads' outputs.
Forward = Callable[[Params, Tensor, tuple[str, ...]], tuple[Tensor, ...]]


def module_forward(net: nn.Module) -> Forward:
    """The general path, for any model: ``functional_call`` swaps the parameters in."""
    return lambda params, x, heads: functional_call(net, params, (x,), {"heads": heads})


def forward_tasks(
    net: Cooperative | Forward,
    params: Params,
    x: Tensor,
    heads: tuple[str, ...],
    strategy: str,
    step: int = 0,
    per_step: frozenset[str] = frozenset(),
    buffers: Params | None = None,
) -> tuple[Tensor, ...]:
    """Run ``net`` for every task: ``params`` and ``x`` both have a leading task dimension.

    ``net`` is a module (run through ``functional_call``) or its ``Forward``. Parameters named
    in ``per_step`` hold one row per inner step (``[T, steps, …]``); the row of ``step`` is
    passed to the model. ``buffers`` are per-step buffers shared by all tasks (``[steps, …]``,
    the module's own tensors: MAML++'s per-step running statistics); their row of ``step`` is
    passed too, a view, so the running updates of each task's forward land in the module.
    """
    forward = module_forward(net) if isinstance(net, nn.Module) else net
    if per_step:
        params = {k: v.select(1, step) if k in per_step else v for k, v in params.items()}
    rows = {k: v.select(0, step) for k, v in (buffers or {}).items()}
    if rows and strategy != "loop":
        raise ValueError("per-step running statistics update in place: strategy must be 'loop'")
    if strategy == "batched":
        return forward(params, x, heads)

    def one(p: Params, xi: Tensor) -> tuple[Tensor, ...]:
        return forward(p, xi, heads)

    if strategy == "vmap":
        return vmap(one)(params, x)
    # unbind, not v[i]: one backward node per tensor instead of one zero-filled task-sized
    # gradient buffer per index (measured ~10% of a Conv-4 step)
    names = list(params)  # never empty: the meta-learner's parameters are always passed
    tasks = zip(*(params[k].unbind(0) for k in names), strict=True)
    outs = [
        one(dict(zip(names, task, strict=True), **rows), xi)
        for task, xi in zip(tasks, x.unbind(0), strict=True)
    ]
    return tuple(torch.stack(o) for o in zip(*outs, strict=True))


def resolve_strategy(strategy: str, net: Cooperative) -> str:
    """The one place a strategy name is checked and ``auto`` resolved (the builder, the public
    API and ``Learner.create`` all call it): ``auto`` picks the measured winner, batched for
    MLPs, loop otherwise (conv nets on CPU). A strategy ``net`` cannot run is one clear line."""
    if strategy not in STRATEGIES:
        raise CmlearnError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "auto":
        strategy = "batched" if net.task_batched else "loop"
    if strategy == "batched" and not net.task_batched:
        raise CmlearnError(
            "strategy 'batched' (train.strategy) needs a model whose every layer takes per-task "
            "parameters (cmlearn's MLP and its co-learner); use loop or vmap"
        )
    if strategy == "vmap" and not net.model.vmappable:
        raise CmlearnError(
            f"strategy 'vmap' (train.strategy) cannot run {type(net.model).__name__}: its "
            "forward reads the task's node ids on the host; use loop"
        )
    tracks = any(getattr(m, "track_running_stats", False) for m in net.modules())
    if tracks and strategy != "loop":
        raise CmlearnError(
            f"BatchNorm running statistics need strategy 'loop' (train.strategy), not {strategy!r}"
        )
    return strategy


def task_losses(out: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss of each task, shape ``[T]``."""
    if loss == "mse":  # one fused op and one backward op (sub, square, flatten took three each)
        return F.mse_loss(out, y, reduction="none").mean(tuple(range(1, out.dim())))
    if loss == "ce":  # labels of any integer dtype (cross_entropy takes int64 class indices)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise CmlearnError(f"classification labels must be integers, not {y.dtype}")
        try:
            per = F.cross_entropy(out.flatten(0, 1), y.flatten().long(), reduction="none")
        except IndexError:  # on the CPU; a GPU asserts instead
            raise CmlearnError(
                f"labels must be class indices in [0, {out.shape[-1]}) for {out.shape[-1]} "
                "outputs (a task's labels are 0..ways-1)"
            ) from None
        return per.view(y.shape[0], -1).mean(1)
    raise ValueError(f"unknown loss {loss!r}; choose from {LOSSES}")


def task_accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(-1) == y).float().flatten(1).mean(1)


def expand(params: Params, n_tasks: int) -> Params:
    return {k: v.expand(n_tasks, *v.shape) for k, v in params.items()}


@dataclass
class Learner:
    """Everything that is meta-learned, and the data that says how.

    ``net`` holds ψ, θ and (optionally) ϕ; ``step_sizes`` the inner step sizes (learned ones
    are leaves with ``requires_grad``). ``pure`` runs ``net`` as a pure function of its
    parameters where it has one (the same results, faster); False forces ``functional_call``.

    Built by ``cmlearn.meta_learner`` (your module) or from a run's config; used through
    ``meta_loss``, ``evaluate``, ``functional``, ``meta_parameters``, ``inference_model``
    and the resolved ``strategy``.
    """

    net: Cooperative
    step_sizes: Params
    rule: InnerRule
    co: CoLearnerSpec
    loss: str = "mse"
    strategy: str = "batched"
    per_step: frozenset[str] = frozenset()  # parameters with one row per inner step
    bn: frozenset[str] = frozenset()  # BatchNorm affine parameters
    step_buffers: frozenset[str] = frozenset()  # per-step running statistics (MAML++ BNRS)
    pure: bool = True
    forward: Forward = field(init=False, repr=False, compare=False)
    _slots: list[tuple[str, nn.Module, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pure = self.net.pure_forward() if self.pure else None
        self.forward = pure or module_forward(self.net)
        # (name, module, attribute) of every parameter: ``params`` reads the attributes each
        # step (so a replaced tensor is seen) without walking the module tree, which took ~3%
        # of a sinusoid meta-step. Modules added to ``net`` later are not seen.
        self._slots = []
        for name, _ in self.net.named_parameters():
            prefix, _, attr = name.rpartition(".")
            self._slots.append((name, self.net.get_submodule(prefix), attr))

    @classmethod
    def create(
        cls, net: Cooperative, rule: InnerRule, co: CoLearnerSpec, loss: str, strategy: str
    ) -> Learner:
        """A learner with fresh step sizes (learnable when the rule learns them) and, for the
        ``random`` control, a co-learner frozen at its initialisation."""
        if co.mode == "random":
            for p in net.colearner.parameters():
                p.requires_grad_(False)
        bn, per_step, outer, buffers = set(), set(), set(), set()
        for prefix, module in net.named_modules():
            if getattr(module, "outer_only", False):  # e.g. AMM-GNN's modulation maps
                outer |= {f"{prefix}.{k}" for k, _ in module.named_parameters()}
            stepped = getattr(module, "per_step", False)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or stepped:
                names = {f"{prefix}.{k}" for k, _ in module.named_parameters(recurse=False)}
                bn |= names
                per_step |= names if stepped else set()
            if stepped and getattr(module, "track_running_stats", False):
                buffers |= {f"{prefix}.{k}" for k in ("running_mean", "running_var")}
        params = {k: v for k, v in net.named_parameters() if k not in outer}
        sizes = rule.init_step_sizes(params, co.adapts, frozenset(bn))
        if rule.learn_lr != "none":
            sizes = {k: v.requires_grad_() for k, v in sizes.items()}
        return cls(
            net,
            sizes,
            rule,
            co,
            loss,
            resolve_strategy(strategy, net),
            frozenset(per_step),
            frozenset(bn),
            frozenset(buffers),
        )

    def rows(self) -> int | None:
        """Inner steps the per-step parameters cover (None: no per-step parameters)."""
        if not self.per_step:
            return None
        return self.net.get_parameter(next(iter(self.per_step))).shape[0]

    def _check_steps(self, steps: int) -> None:
        rows = self.rows()
        if rows is not None and steps > rows:
            raise CmlearnError(
                f"the model has per-step BatchNorm rows for {rows} inner steps and cannot adapt "
                f"for {steps} (MAML++'s released code fails the same way)"
            )

    def params(self, adapted_colearner: bool = True) -> Params:
        """ψ, θ and ϕ by name. Without ``adapted_colearner`` ϕ is left out: a co-learner that
        is never adapted is shared by all tasks, so the forward uses the module's own
        parameters (no per-task view, no swap), and gradients reach them directly."""
        return {
            name: getattr(module, attr)
            for name, module, attr in self._slots
            if adapted_colearner or not name.startswith("colearner.")
        }

    def buffers(self) -> Params:
        """The per-step running statistics by name (read each call: ``load_state_dict`` and
        ``.to`` may replace them)."""
        return {name: self.net.get_buffer(name) for name in self.step_buffers}

    def meta_objective(
        self, batch: TaskBatch, progress: Stage | float = 0.0
    ) -> tuple[Tensor, dict]:
        """Outer loss (mean over tasks) of one meta-batch, plus per-task terms.

        ``progress`` is the ``Stage`` of meta-training (fraction done and epoch: MAML++'s
        annealing); a float is a fraction at epoch 0. Returns ``(loss, terms)`` where
        ``terms`` has the per-task ``meta`` and ``co`` query losses (already weighted over
        steps) used by the gradient analysis.
        """
        rule, co, T = self.rule, self.co, batch.n_tasks
        stage = Stage.of(progress)
        self._check_steps(rule.steps)
        params = expand(self.params(adapted_colearner=co.adapts), T)

        trajectory = adapt(
            params,
            self.step_sizes,
            rule,
            self._support_loss(batch),
            rule.steps,
            rule.is_first_order(stage),
            rule.sam_rho,
        )
        terms: dict[str, Tensor] = {}
        weights = rule.step_weights(stage.epoch, rule.steps)
        for step, (weight, adapted) in enumerate(zip(weights, trajectory, strict=True)):
            if weight == 0.0:
                continue
            with self._query_mode():
                outs = forward_tasks(
                    self.forward,
                    adapted,
                    batch.query_x,
                    co.heads(inner=False),
                    self.strategy,
                    step,
                    self.per_step,
                    self.buffers(),
                )
            for key, out in zip(("meta", "co"), outs, strict=False):
                loss = task_losses(out, batch.query_y, self.loss)
                loss = loss if weight == 1.0 else weight * loss
                terms[key] = terms[key] + loss if key in terms else loss
            if self.loss == "ce":
                terms["accuracy"] = task_accuracy(outs[0], batch.query_y)
        total = terms["meta"] + co.gamma * terms["co"] if co.active else terms["meta"]
        penalty = getattr(self.net.model, "penalty", None)
        if penalty is not None:  # a model's own outer-loss term (AMM-GNN's regulariser)
            terms["penalty"] = penalty(batch.query_x)
            total = total + terms["penalty"]
        return total.mean(), terms

    @contextmanager
    def _query_mode(self) -> Iterator[None]:
        """Query losses in eval mode for models that ask (``query_eval``: TLP's GNNs drop out
        only in the inner loop); the mode is restored after."""
        was = self.net.training
        if not (was and getattr(self.net.model, "query_eval", False)):
            yield
            return
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was)

    def _support_loss(self, batch: TaskBatch, head: str | None = None):
        """Per-task support loss: training's (meta, plus γ·co when CL adapts ϕ) or one head's."""
        heads = self.co.heads(inner=True) if head is None else (head,)

        def loss(p: Params, step: int) -> Tensor:
            outs = forward_tasks(
                self.forward,
                p,
                batch.support_x,
                heads,
                self.strategy,
                step,
                self.per_step,
                self.buffers(),
            )
            total = task_losses(outs[0], batch.support_y, self.loss)
            if len(outs) > 1:
                total = total + self.co.gamma * task_losses(outs[1], batch.support_y, self.loss)
            return total

        return loss

    def evaluate(
        self,
        batch: TaskBatch,
        mode: str = "cml",
        steps: int | None = None,
        return_outputs: bool = False,
    ) -> dict:
        """Adapt to each test task and score its query set; per-task tensors ``[T]``.

        Returns ``loss`` (each task's mean query loss, ``[T]``), ``accuracy`` (classification:
        each task's query accuracy, ``[T]``) and, with ``return_outputs``, ``output`` (the
        predicting head's query outputs, ``[T, n_query, out]``).

        ``mode`` is one of ``cml`` or its alias ``maml`` (the meta-learner alone: MAML's
        inference, the only mode of a learner without a co-learner), ``cml-dagger``
        (paper Eq. 9), ``cml-dagger-code`` (the official code's CML†) or
        ``cml-dagger-unadapted``; see ``cml.py``. A CL run adapts ϕ too, as in its training, so
        ``cml`` gives CL⋆, ``cml-dagger-code`` CL† and ``cml-dagger-unadapted`` Table 4's
        "CL† w/o adaptation".
        """
        try:
            plan = eval_plan(mode)
        except ValueError as err:
            raise CmlearnError(str(err)) from None
        if "co" in (plan.adapt_head, plan.predict_head) and self.net.colearner is None:
            raise CmlearnError(f"evaluation mode {mode!r} needs a co-learner; this one has none")
        T = batch.n_tasks
        if plan.body_only:  # Eq. 9: ψ ← ψ − α ∇ψ L(f^c; S), with the base α
            own = self.params(adapted_colearner=False)
            sizes = {
                k: v.new_tensor(self.rule.lr)
                for k, v in own.items()
                if group_of(k) == "body" and (self.rule.adapt_bn or k not in self.bn)
            }
            rule, support_loss = InnerRule(steps=self.rule.steps, lr=self.rule.lr), "co"
        else:  # adapt exactly as in training (for CL: ψ, θ and ϕ on meta + γ·co)
            adapt_co = self.co.adapts and plan.adapt_colearner
            own = self.params(adapted_colearner=adapt_co)
            sizes = {k: v.detach() for k, v in self.step_sizes.items() if k in own}
            rule, support_loss = self.rule, None if adapt_co else "meta"
        steps = steps or self.rule.steps
        self._check_steps(steps)
        params = expand({k: v.detach().requires_grad_() for k, v in own.items()}, T)
        loss_fn = self._support_loss(batch, support_loss)
        adapted = adapt(params, sizes, rule, loss_fn, steps, True)[-1]  # never SAM at test
        with torch.no_grad():
            (out,) = forward_tasks(
                self.forward,
                adapted,
                batch.query_x,
                (plan.predict_head,),
                self.strategy,
                steps - 1,
                self.per_step,
                self.buffers(),
            )
            result = {"loss": task_losses(out, batch.query_y, self.loss)}
            if self.loss == "ce":
                result["accuracy"] = task_accuracy(out, batch.query_y)
            if return_outputs:
                result["output"] = out
        return result

    # The public face of the learner (``cmlearn.meta_learner`` builds one): the two idioms of
    # the learn2learn and torch.func worlds over the same meta-objective.

    def meta_loss(self, batch: TaskBatch, progress: Stage | float = 0.0) -> tuple[Tensor, dict]:
        """The batched idiom: ``loss, terms = learner.meta_loss(batch)``, then
        ``loss.backward()`` and your optimiser's step (``meta_parameters()``).

        ``loss`` is the outer loss averaged over the batch's tasks (for CML: meta-learner +
        γ · co-learner query losses); ``terms`` holds per-task ``[T]`` tensors: ``meta`` and
        ``co`` query losses and ``accuracy`` for classification. Example::

            loss, terms = learner.meta_loss(tasks.sample(4, cmlearn.generator("train", 0, step)))
            loss.backward(); optimizer.step(); optimizer.zero_grad()
        """
        return self.meta_objective(batch, progress)

    def functional(self) -> tuple[Callable[..., Tensor], Params, Params]:
        """The functional idiom: ``f, params, buffers = learner.functional()`` with
        ``loss = f(params, buffers, batch)`` a pure function of its arguments, for your own
        ``torch.func`` code (``torch.func.grad(f)(params, buffers, batch)`` gives the same
        gradients as ``meta_loss(batch)[0].backward()``; tested).

        ``params`` are the module's parameters by name (``model.body.*``, ``model.head.*``,
        ``colearner.*``) plus learned inner step sizes as ``step_size.<name>`` (Meta-SGD,
        MAML++); ``buffers`` the modules' buffers (BatchNorm running statistics). Both are the
        live tensors: detach or clone them for a copy. ``torch.func.grad`` differentiates every
        entry, the frozen co-learner of the ``random`` control too: step only the names of
        ``meta_parameters()``.

        Why no per-task ``clone()``/``adapt()`` handle (learn2learn's): the inner loop adapts
        every task of a batch at once, on parameter dicts with a leading task dimension (a
        free view), so a per-task module copy would undo what makes a step fast; ``f`` and
        ``meta_loss`` take a batch of one task where a single task is wanted.
        """
        holder = _Objective(self)
        params: Params = dict(self.net.named_parameters())
        params |= {STEP_SIZE + k: v for k, v in self.step_sizes.items() if v.requires_grad}
        buffers: Params = dict(self.net.named_buffers())

        def f(
            params: Params, buffers: Params, batch: TaskBatch, progress: Stage | float = 0.0
        ) -> Tensor:
            sizes = {k[len(STEP_SIZE) :]: v for k, v in params.items() if k.startswith(STEP_SIZE)}
            # the inner loop differentiates the loss w.r.t. the parameters: a plain tensor
            # (a call outside any transform) becomes a leaf that can be differentiated
            state = {
                f"net.{k}": v if v.requires_grad else v.detach().requires_grad_()
                for k, v in params.items()
                if not k.startswith(STEP_SIZE)
            }
            state |= {f"net.{k}": v for k, v in buffers.items()}
            saved = self.step_sizes
            self.step_sizes = saved | sizes
            try:
                return functional_call(holder, state, (batch, progress))
            finally:
                self.step_sizes = saved

        return f, params, buffers

    def meta_parameters(self) -> list[Tensor]:
        """What the meta-optimiser steps: ψ, θ, learned step sizes, and ϕ when it is trained
        (``cml``, ``cl``; the ``random`` control's ϕ stays frozen)."""
        learned = [s for s in self.step_sizes.values() if s.requires_grad]
        co = list(self.net.colearner.parameters()) if self.co.trained else []
        return [*self.net.model.parameters(), *learned, *co]

    @property
    def inference_model(self) -> nn.Module:
        """The network a trained learner predicts with: body and head, no co-learner (at test
        time CML's network is exactly MAML's). ``inference_model(x)`` is your module's output
        (before adaptation; ``evaluate`` adapts to a task first)."""
        return self.net.model


STEP_SIZE = "step_size."  # the prefix of learned inner step sizes in ``functional``'s params


class _Objective(nn.Module):
    """``learner.meta_objective``'s loss as a module's forward, with the learner's network as
    its one submodule ``net``: ``functional_call`` then swaps given tensors into it."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.net = learner.net
        object.__setattr__(self, "learner", learner)  # not a submodule

    def forward(self, batch: TaskBatch, progress: Stage | float) -> Tensor:
        return self.learner.meta_objective(batch, progress)[0]
