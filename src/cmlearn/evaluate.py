"""Seeded test tasks → per-task scores → mean ± 95% confidence interval; paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from cmlearn.engine import Learner
from cmlearn.tasks import TaskBatch, TaskSource
from cmlearn.tasks.batch import generator

CHUNK = 500  # tasks drawn per generator; fixed, so the tasks depend only on the seed


def fixed_tasks(
    source: TaskSource, n_tasks: int, seed: int, split: str, keep: bool = False
) -> list[_Chunk]:
    """``n_tasks`` tasks of ``split`` (``val`` or ``test``) in chunks of at most ``CHUNK``.

    Chunk ``i`` depends only on ``(split, seed, i)`` (its own random stream), so every
    method, run seed and training length sees the same tasks, validation and test tasks
    never coincide, and the first N tasks of a larger evaluation are those of a smaller one.
    Chunks are drawn lazily, one at a time, so a large test never sits in memory at once;
    ``keep`` holds them once drawn (validation, scored many times) instead.
    """
    return [
        _Chunk(source, seed, split, i, min(CHUNK, n_tasks - start), keep)
        for i, start in enumerate(range(0, n_tasks, CHUNK))
    ]


class _Chunk:
    """A chunk of fixed tasks, sampled when used (and kept if asked)."""

    def __init__(
        self, source: TaskSource, seed: int, split: str, index: int, size: int, keep: bool
    ) -> None:
        self.source, self.seed, self.split, self.index, self.size = source, seed, split, index, size
        self.keep = keep
        self._batch: TaskBatch | None = None

    def get(self) -> TaskBatch:
        if self._batch is not None:
            return self._batch
        gen = generator(self.split, self.seed, self.index)
        batch = self.source.sample(CHUNK, gen, self.split)
        if self.size < CHUNK:  # own copies: a slice would keep all CHUNK tasks alive
            batch = batch[: self.size].clone()
        if self.keep:
            self._batch = batch
        return batch


def batches(chunks: list, size: int = 0) -> list[TaskBatch]:
    """The task batches of ``chunks`` (fixed tasks or plain batches), split into ``size``."""
    out = []
    for chunk in chunks:
        batch = chunk.get() if isinstance(chunk, _Chunk) else chunk
        step = size or batch.n_tasks
        out.extend(batch[i : i + step] for i in range(0, batch.n_tasks, step))
    return out


def scores(
    learner: Learner,
    chunks: list,
    metric: str,
    mode: str = "cml",
    steps: int = 0,
    batch_size: int = 0,
) -> np.ndarray:
    """Per-task ``metric`` (``mse``: query loss; ``accuracy``) after adaptation with
    ``steps`` inner steps (0 = the training rule's); ``batch_size`` tasks at a time."""
    key = "accuracy" if metric == "accuracy" else "loss"
    was_training = learner.net.training
    learner.net.eval()
    try:
        out = []
        for chunk in chunks:
            for batch in batches([chunk], batch_size):
                out.append(learner.evaluate(batch, mode, steps or None)[key].detach().cpu())
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
