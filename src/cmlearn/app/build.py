"""From a ``Config`` to what a run needs: data → task source → model → co-learner → learner.

Every piece is looked up by name in a registry (``cmlearn.core.registry``); nothing here knows
a particular dataset or backbone.
"""

from __future__ import annotations

import torch

from cmlearn.app.config import Config
from cmlearn.app.runtime import Runtime
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.models import Cooperative
from cmlearn.core.registry import COLEARNERS, DATASETS, MODELS, SAMPLERS
from cmlearn.core.tasks import TaskSource, generator
from cmlearn.core.tasks.batch import task_seed


def build_source(cfg: Config, runtime: Runtime | None = None) -> TaskSource:
    """The seeded task sampler of ``cfg.data`` on ``runtime.device``."""
    runtime = runtime or Runtime()
    data = DATASETS.get(cfg.data.name).build(cfg.data.options, runtime.data_root, runtime.cache)
    return SAMPLERS.get(data.kind).build(data, cfg.task, runtime.device)


def build_learner(cfg: Config, source: TaskSource, device: torch.device | None = None) -> Learner:
    """Model and co-learner, each initialised from its own seeded stream.

    The model draws from ``("init", seed)`` and the co-learner from ``("colearner", seed)``,
    so (ψ, θ) start identical with or without a co-learner: CML with γ = 0 is MAML exactly.
    Both are built on the CPU (the same numbers on every device), then moved.
    """
    device = device or torch.device("cpu")
    spec = CoLearnerSpec(cfg.colearner.mode, cfg.colearner.gamma)
    try:
        with _seeded("init", cfg.train.seed):
            rows = cfg.inner.steps if cfg.inner.per_step_bn else 0
            model = MODELS.get(cfg.model.name).build(cfg.model.options, source, rows)
        colearner = None
        if spec.active:
            probe = Cooperative(model, None, cfg.colearner.point)
            # a real input, on the CPU where the model is built (the pool may be on the GPU)
            example = source.sample(1, generator("val", 0), "val").support_x[0].cpu()
            was = model.training
            model.eval()  # no running statistics touched by the probe
            with torch.no_grad():
                shape = tuple(probe.features(example).shape[1:])
            model.train(was)
            with _seeded("colearner", cfg.train.seed):
                head = cfg.colearner.head
                colearner = COLEARNERS.get(head.name).build(
                    head.options, shape, source.out_features
                )
        net = Cooperative(model, colearner, cfg.colearner.point).to(device)
    except ValueError as err:
        raise CmlearnError(str(err)) from None
    running = [n for n, _ in net.named_buffers() if n.endswith("running_mean")]
    if cfg.inner.checkpoint and not cfg.inner.first_order and running:
        raise CmlearnError(
            f"inner.checkpoint recomputes every inner step, which would update the running "
            f"statistics of {running[0].rsplit('.', 1)[0]} more than once; use transductive "
            "BatchNorm there (model.bn / colearner.head.options.bn) or inner.checkpoint=false"
        )
    learner = Learner.create(net, cfg.inner, spec, source.loss, resolve_strategy(cfg, net))
    rows = learner.rows()
    if rows is not None and rows != cfg.inner.steps:
        raise CmlearnError(
            f"per-step BatchNorm has {rows} rows but inner.steps={cfg.inner.steps}: rows beyond "
            "the training steps would never be trained; set model.bn_steps to inner.steps"
        )
    if rows is not None and cfg.eval_steps > rows:
        raise CmlearnError(
            f"per-step BatchNorm has rows for {rows} inner steps; eval.steps={cfg.eval_steps} "
            "would use untrained rows (MAML++'s code fails the same way); set eval.steps <= "
            f"{rows}"
        )
    return learner


class _seeded:
    """Seed torch's global generator for a block (layer initialisers draw from it)."""

    def __init__(self, stream: str, seed: int) -> None:
        self.seed = task_seed(stream, seed)

    def __enter__(self) -> None:
        self.state = torch.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.state)


def resolve_strategy(cfg: Config, net: Cooperative) -> str:
    """``auto`` picks the measured winner: batched for MLPs, loop for conv nets on CPU."""
    strategy = cfg.train.strategy
    if strategy == "auto":
        strategy = "batched" if net.task_batched else "loop"
    if strategy == "batched" and not net.task_batched:
        raise CmlearnError(
            "train.strategy=batched needs a model whose every layer takes per-task parameters "
            "(an MLP and its co-learner); use loop or vmap"
        )
    if strategy == "vmap" and not net.model.vmappable:
        raise CmlearnError(
            f"train.strategy=vmap cannot run {type(net.model).__name__}: its forward reads the "
            "task's node ids on the host; use loop"
        )
    tracks = any(getattr(m, "track_running_stats", False) for m in net.modules())
    if tracks and strategy != "loop":
        raise CmlearnError("BatchNorm running statistics need train.strategy=loop")
    return strategy


__all__ = ["build_learner", "build_source", "generator", "resolve_strategy"]
