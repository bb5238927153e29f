"""Seeded test tasks → per-task scores → mean ± 95% confidence interval; paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from cmlearn.engine import Learner
from cmlearn.tasks import TaskBatch, TaskSource
from cmlearn.tasks.batch import generator

VAL, TEST = 1, 2  # stream ids: validation and test tasks never share a seed
CHUNK = 500  # tasks drawn per generator; fixed, so the tasks depend only on the seed


def fixed_tasks(
    source: TaskSource, n_tasks: int, seed: int, stream: int, split: str
) -> list[TaskBatch]:
    """``n_tasks`` tasks in chunks; chunk ``i`` depends only on ``(seed, stream, i)``.

    So every method, run seed and training length sees the same tasks, and the first N
    tasks of a larger evaluation are the N tasks of a smaller one.
    """
    chunks = []
    for i, start in enumerate(range(0, n_tasks, CHUNK)):
        size = min(CHUNK, n_tasks - start)
        chunks.append(source.sample(CHUNK, generator(seed, stream, i), split)[:size])
    return chunks


def scores(
    learner: Learner, chunks: list[TaskBatch], metric: str, mode: str = "cml", steps: int = 0
) -> np.ndarray:
    """Per-task ``metric`` (``mse``: query loss; ``accuracy``) after adaptation."""
    key = "accuracy" if metric == "accuracy" else "loss"
    was_training = learner.net.training
    learner.net.eval()
    try:
        out = [learner.evaluate(batch, mode, steps or None)[key] for batch in chunks]
    finally:
        learner.net.train(was_training)
    return torch.cat(out).double().numpy()


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and the half-width of its 95% confidence interval (Student t)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "ci95": math.nan, "std": math.nan, "n": n}
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "ci95": half, "std": std, "n": n}


def paired(values: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Mean per-task difference ``values − baseline`` on the same tasks, with its 95% CI."""
    if values.shape != baseline.shape:
        raise ValueError("a paired comparison needs scores on the same tasks")
    return summarize(values - baseline)
