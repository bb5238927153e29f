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
from cmlearn.core.models.cooperative import example_input, feature_shape
from cmlearn.core.registry import COLEARNERS, DATASETS, MODELS, SAMPLERS
from cmlearn.core.tasks import TaskSource, generator
from cmlearn.core.tasks.batch import seeded as _seeded


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
            shape = feature_shape(model, cfg.colearner.point, example_input(source))
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
    learner = Learner.create(net, cfg.inner, spec, source.loss, cfg.train.strategy)
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


__all__ = ["build_learner", "build_source", "generator"]
