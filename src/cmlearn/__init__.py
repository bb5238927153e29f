"""cmlearn: Cooperative Meta-Learning (CML) on a functional torch.func core.

The public API (everything else is internal):

Your model and tasks (torch only)
    meta_learner(model, tasks, algorithm=, colearner=, gamma=, …) -> Learner
        any nn.Module split into body and head, a co-learner probed to fit; the learner's
        ``meta_loss(batch)``, ``evaluate(batch, mode)``, ``functional()``,
        ``meta_parameters()``, ``inference_model``, ``strategy``
    split_model(module, head=)        the body/head split on its own
    inner_rule(algorithm, **fields)   an algorithm's inner loop by name
    few_shot(X, y, ways=, shots=, …)  N-way K-shot tasks over labelled tensors or a Dataset
    class_dataset(X, y, splits=)      the class-disjoint split those tasks draw from
    regression(fn, shots=, …)         tasks from a regression family given as a function
    RegressionFamily, TaskBatch, generator(stream, *keys)
    ALGORITHMS, CO_MODES, EVAL_MODES, STRATEGIES   the names accepted
Runs, as the CLI writes them
    fit(model, data, out, **settings)   train into a run folder (validation, best model,
                                        resume, metrics.jsonl); experiment(…) -> Config
    load(run) -> Learner, task_scores(learner, tasks, n, seed, mode)
    compare_methods(cfg, methods, seeds, out)   train and score methods on the same tasks
    format_table(report), summarize(values), paired(values, baseline)
Errors
    CmlearnError (one line for the user), Interrupted (stopped on request; saved)

Example::

    import cmlearn
    tasks = cmlearn.few_shot(X, y, ways=5, shots=1)
    learner = cmlearn.meta_learner(MyCNN(), tasks, colearner="cml", gamma=0.5)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


from cmlearn.core.errors import CmlearnError, Interrupted

# Public name -> the module that defines it. Loaded on first use, so importing cmlearn (and
# its core) stays light: the run machinery pulls in SciPy only when it is asked for.
_API: dict[str, str | tuple[str, str]] = {
    "meta_learner": "cmlearn.core.api",
    "split_model": "cmlearn.core.api",
    "inner_rule": "cmlearn.core.api",
    "few_shot": "cmlearn.core.sources",
    "class_dataset": "cmlearn.core.sources",
    "regression": "cmlearn.core.sources",
    "RegressionFamily": "cmlearn.core.sources",
    "TaskBatch": "cmlearn.core.tasks.batch",
    "generator": "cmlearn.core.tasks.batch",
    "Learner": "cmlearn.core.engine",
    "STRATEGIES": "cmlearn.core.engine",
    "ALGORITHMS": "cmlearn.core.algorithms",
    "CO_MODES": "cmlearn.core.cml",
    "EVAL_MODES": "cmlearn.core.cml",
    "fit": "cmlearn.app.fit",
    "experiment": "cmlearn.app.fit",
    "load": "cmlearn.app.fit",
    "task_scores": "cmlearn.app.fit",
    "compare_methods": ("cmlearn.app.compare", "compare"),
    "format_table": "cmlearn.app.compare",
    "summarize": "cmlearn.app.stats",
    "paired": "cmlearn.app.stats",
}

__all__ = ["CmlearnError", "Interrupted", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cmlearn' has no attribute {name!r}")
    module, attr = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
