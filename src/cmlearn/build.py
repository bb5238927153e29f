"""From a ``Config`` to the objects a run needs: the task source and the learner."""

from __future__ import annotations

import torch

from cmlearn import CmlearnError
from cmlearn.cml import CoLearnerSpec
from cmlearn.config import Config
from cmlearn.engine import STRATEGIES, Learner
from cmlearn.models import MLP, Cooperative, build_colearner
from cmlearn.tasks import SinusoidSource, TaskSource
from cmlearn.tasks.batch import generator, task_seed


def build_source(cfg: Config) -> TaskSource:
    if cfg.task.family != "sinusoid":
        raise CmlearnError(f"unknown task family {cfg.task.family!r}; available: sinusoid")
    return SinusoidSource(cfg.task.shots, cfg.task.queries, cfg.task.eval_queries)


def build_learner(cfg: Config, source: TaskSource) -> Learner:
    """Model and co-learner initialised from ``train.seed``.

    The co-learner draws from its own seeded stream, so (ψ, θ) start identical with or
    without it: CML with γ = 0 is then MAML exactly.
    """
    cfg.validate()
    if cfg.model.name != "mlp":
        raise CmlearnError(f"unknown model {cfg.model.name!r}; available: mlp")
    torch.manual_seed(task_seed(cfg.train.seed, 0))
    model = MLP(source.in_features, tuple(cfg.model.hidden), source.out_features)
    spec = CoLearnerSpec(cfg.colearner.mode, cfg.colearner.gamma)
    try:
        colearner = None
        if spec.active:
            probe = Cooperative(model, None, cfg.colearner.point)
            example = source.sample(1, generator(0), "train").support_x[0]
            shape = probe.features(example).shape[1:]
            torch.manual_seed(task_seed(cfg.train.seed, 1))
            colearner = build_colearner(
                shape,
                source.out_features,
                tuple(cfg.colearner.hidden),
                cfg.colearner.conv_layers,
                cfg.model.bn,
            )
        net = Cooperative(model, colearner, cfg.colearner.point)
    except ValueError as err:
        raise CmlearnError(str(err)) from None
    return Learner.create(net, cfg.inner, spec, source.loss, resolve_strategy(cfg, net))


def resolve_strategy(cfg: Config, net: Cooperative) -> str:
    """``auto`` picks the measured winner: batched for MLPs, loop for conv nets on CPU."""
    strategy = cfg.model.strategy
    if strategy not in STRATEGIES:
        raise CmlearnError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "auto":
        strategy = "batched" if net.task_batched else "loop"
    if strategy == "batched" and not net.task_batched:
        raise CmlearnError("strategy 'batched' needs a model built from TaskLinear layers")
    tracks = any(getattr(m, "track_running_stats", False) for m in net.modules())
    if tracks and strategy != "loop":
        raise CmlearnError("BatchNorm running statistics need model.strategy=loop")
    return strategy
