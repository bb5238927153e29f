"""N-way K-shot tasks sampled from a labelled pool by tensor indexing (no per-image Python).

For a meta-batch of ``T`` tasks one generator draws, all at once: the ``N`` classes of each
task (a random permutation of the split's classes, so labels are in random order), a quarter
turn per class where the split asks for per-task rotation, and ``K + Q`` distinct examples
per class. The pool is gathered with one index, rotated in at most three masked ``rot90``
calls, and scaled to ``[0, 1]`` floats on the pool's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmlearn import CmlearnError
from cmlearn.data.pool import ClassDataset
from cmlearn.registry import SAMPLERS
from cmlearn.tasks.batch import TaskBatch


@dataclass(frozen=True)
class ClassificationSource:
    """``ways``-way ``shots``-shot tasks with ``queries`` (train) or ``eval_queries`` (val,
    test) query examples per class."""

    dataset: ClassDataset
    ways: int
    shots: int
    queries: int
    eval_queries: int
    loss: str = "ce"
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        for split, queries in (
            ("train", self.queries),
            ("val", self.eval_queries),
            ("test", self.eval_queries),
        ):
            n = len(self.dataset.splits[split])
            if self.ways > n:
                raise CmlearnError(
                    f"{self.dataset.name}: {self.ways}-way tasks need {self.ways} classes but "
                    f"the {split} split has {n}"
                )
            need, have = self.shots + queries, self.dataset.min_count(split)
            if need > have:
                raise CmlearnError(
                    f"{self.dataset.name}: {self.shots} shots + {queries} queries = {need} "
                    f"examples per class, but a {split} class has only {have}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    @property
    def out_features(self) -> int:
        return self.ways

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch:
        pool, classes = self.dataset.pool, self.dataset.splits[split]
        n, k = self.ways, self.shots
        q = self.queries if split == "train" else self.eval_queries
        keys = torch.rand(n_tasks, len(classes), generator=gen)  # a random order of classes
        chosen = keys.topk(n, 1, largest=False).indices  # its first N: [T, N]
        ids = classes.classes[chosen]
        turns = classes.rotations[chosen]
        drawn = torch.randint(0, 4, turns.shape, generator=gen)
        turns = torch.where(turns < 0, drawn, turns)
        counts = pool.counts[ids]  # [T, N]
        most = int(counts.max())
        keys = torch.rand(n_tasks, n, most, generator=gen)
        keys = keys.masked_fill(torch.arange(most) >= counts[..., None], 2.0)
        picks = keys.topk(k + q, -1, largest=False).indices  # distinct examples per class
        index = pool.offsets[ids][..., None] + picks  # [T, N, K+Q]
        x = pool.images[index.to(pool.images.device)]  # [T, N, K+Q, C, H, W] uint8
        x = rotate(x, turns.to(x.device))
        x = x.float().div_(255.0)
        labels = torch.arange(n, device=x.device)
        support_y = labels.repeat_interleave(k).expand(n_tasks, n * k)
        query_y = labels.repeat_interleave(q).expand(n_tasks, n * q)
        return TaskBatch(
            x[:, :, :k].flatten(1, 2),
            support_y.contiguous(),
            x[:, :, k:].flatten(1, 2),
            query_y.contiguous(),
        )


def rotate(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the examples of class ``[t, c]`` of ``x`` by ``turns[t, c]`` quarter turns."""
    if not bool((turns != 0).any()):
        return x
    out = x.clone()
    for turn in (1, 2, 3):
        mask = turns == turn
        if bool(mask.any()):
            out[mask] = torch.rot90(x[mask], turn, dims=(-2, -1))
    return out


@SAMPLERS.register("classes")
def classification_source(
    dataset: ClassDataset, task, device: torch.device
) -> ClassificationSource:
    data = ClassDataset(dataset.name, dataset.pool.to(device), dataset.splits, dataset.kind)
    return ClassificationSource(data, task.ways, task.shots, task.queries, task.eval_queries)
