"""Training, saving and scoring the user's own parts as cmlearn's CLI does, from Python.

``fit`` writes exactly the run folder ``cmlearn train`` writes (it is the same
``train.train``): ``config.json`` names the model and data by import path and options
(``cmlearn.app.parts``), so ``cmlearn eval RUN``, ``cmlearn compare --from RUN`` and
``cmlearn analyze RUN`` rebuild them. Validation on fixed tasks, the best-validation
inference model (no co-learner in it), exact resume, the NaN stop, saving on SIGTERM, the
progress bar and ``metrics.jsonl`` are all ``train``'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmlearn.app.config import Config
from cmlearn.app.parts import import_path
from cmlearn.app.runtime import Runtime
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError


def experiment(
    model: Any,
    data: Any,
    *,
    algorithm: str = "maml",
    colearner: str = "none",
    gamma: float = 0.2,
    head: str = "",
    point: str = "",
    colearner_head: Any = "mlp",
    model_options: dict | None = None,
    data_options: dict | None = None,
    colearner_options: dict | None = None,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    eval_queries: int = 15,
    meta_batch: int = 4,
    steps: int = 1000,
    meta_lr: float = 1e-3,
    inner_steps: int = 1,
    inner_lr: float = 0.01,
    rho_low: float = 0.0,
    rho_up: float = 0.0,
    val_every: int = 100,
    val_tasks: int = 100,
    test_tasks: int = 600,
    eval_seed: int = 1234,
    seed: int = 0,
    strategy: str = "auto",
    overrides: Sequence[str] = (),
) -> Config:
    """The run configuration of your parts: what ``fit`` trains and ``compare`` varies.

    ``model``: an ``nn.Module`` class or factory (or its ``"package.module:Name"``), built
    as ``model(**model_options)`` with ``out_features`` (and ``input_shape``) filled in when
    it takes them; ``head`` names its head (default: the last registered child). ``data``: a
    function (or its path) called as ``data(**data_options)`` that returns ``(X, y)``, a
    ``Dataset`` of ``(x, label)``, ``cmlearn.class_dataset(…)``, a ``RegressionFamily`` or a
    task source; tasks are then ``ways``-way ``shots``-shot with ``queries`` query examples
    per class (``eval_queries`` in validation and test tasks). ``rho_low``/``rho_up``:
    Sharp-MAML's inner and outer SAM radii. ``overrides``: any further ``key=value`` of the
    CLI's ``--set`` (``cmlearn presets --json`` lists the keys). Example::

        cfg = cmlearn.experiment(MyCNN, load_my_data, colearner="cml", steps=2000)
    """
    co_head = colearner_head if isinstance(colearner_head, str) else import_path(colearner_head)
    model_name = import_path(model)
    own = ":" in model_name  # a user's part takes ``head``; a registered backbone knows its own
    model_options = {**(model_options or {})} | ({"head": head} if own or head else {})
    typed: list[tuple[str, Any]] = [
        ("algorithm", algorithm),
        ("data", {"name": import_path(data), "options": dict(data_options or {})}),
        ("model", {"name": model_name, "options": model_options}),
        ("task.ways", ways),
        ("task.shots", shots),
        ("task.queries", queries),
        ("task.eval_queries", eval_queries),
        ("task.meta_batch", meta_batch),
        ("inner.steps", inner_steps),
        ("inner.lr", inner_lr),
        ("inner.sam_rho", rho_low),
        ("colearner.mode", colearner),
        ("colearner.gamma", gamma),
        ("colearner.point", point),
        ("colearner.head", {"name": co_head, "options": dict(colearner_options or {})}),
        ("train.steps", steps),
        ("train.meta_lr", meta_lr),
        ("train.sam_rho", rho_up),
        ("train.val_every", val_every),
        ("train.val_tasks", val_tasks),
        ("train.log_every", min(100, val_every)),
        ("train.seed", seed),
        ("train.strategy", strategy),
        ("eval.tasks", test_tasks),
        ("eval.seed", eval_seed),
    ]
    cfg = Config().apply(typed).override(list(overrides))
    if cfg.algorithm == "mamlpp":  # per-step BatchNorm rows exist only in cmlearn's backbones
        cfg = cfg.apply([("inner.per_step_bn", False)])
    return cfg


KEYWORDS = ("model", "data")  # experiment's positional parts, not settings


def fit(
    model: Any,
    data: Any = None,
    out: str | Path = "runs/fit",
    *,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    **settings: Any,
) -> dict:
    """Meta-train your model on your data into run folder ``out``; returns the summary
    (``run``, ``steps``, ``best_step``, the best validation score, ``seconds``).

    ``model`` and ``data`` with keyword ``settings`` are ``experiment``'s; or pass a
    ready ``Config`` as ``model`` (and no ``data``). ``resume=True`` continues a stopped run
    exactly (the same tasks and schedules as an uninterrupted one). Ctrl-C or SIGTERM saves
    and raises ``cmlearn.Interrupted``; a non-finite loss stops with a ``CmlearnError``. The
    folder's ``model.pt`` is the best-validation inference model (no co-learner);
    ``cmlearn.load(out)`` gives it back as a learner. Example::

        cmlearn.fit(MyCNN, load_my_data, "runs/mine-cml", colearner="cml", steps=2000)
    """
    from cmlearn.app.train import train

    if isinstance(model, Config):
        cfg = model
    else:
        try:
            inspect.signature(experiment).bind(model, data, **settings)
        except TypeError as err:
            known = [k for k in inspect.signature(experiment).parameters if k not in KEYWORDS]
            raise CmlearnError(f"fit: {err}; settings: {', '.join(known)}") from None
        cfg = experiment(model, data, **settings)
    runtime = Runtime.resolve(device=device)
    return train(cfg, Path(out), resume=resume, progress=progress, runtime=runtime)


def load(run: str | Path, device: str = "cpu") -> Learner:
    """The learner of a run folder (``fit``'s or the CLI's), at its best validation step: the
    inference model (``learner.inference_model``) and the co-learner, if the run had one.
    Example: ``cmlearn.load("runs/mine-cml").evaluate(batch, "cml-dagger-code")``."""
    from cmlearn.app.runs import load_run

    return load_run(Path(run), runtime=Runtime.resolve(device=device))[1]


def task_scores(
    learner: Learner, tasks: Any, n_tasks: int = 600, seed: int = 1234, mode: str = "maml"
) -> np.ndarray:
    """Per-task test scores (accuracy, or MSE for regression) of ``learner`` on ``n_tasks``
    fixed test tasks of ``tasks``, drawn from ``seed`` exactly as ``cmlearn eval`` and
    ``compare`` draw them, so two learners scored with one seed see the same tasks
    (``cmlearn.paired`` gives their per-task difference with its 95% interval). Example::

        delta = cmlearn.paired(cmlearn.task_scores(cml, tasks), cmlearn.task_scores(maml, tasks))
    """
    from cmlearn.app.evaluate import CHUNK, EvalSpec, fixed_tasks, scores

    spec = EvalSpec(tasks.metric, mode, 0, CHUNK)
    return scores(learner, fixed_tasks(tasks, n_tasks, seed, "test"), spec)
