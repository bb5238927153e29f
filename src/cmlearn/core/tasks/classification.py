"""N-way K-shot tasks sampled from a labelled pool by tensor indexing (no per-image Python).

For a meta-batch of ``T`` tasks one generator draws, all at once: the ``N`` classes of each
task (a random permutation of the split's classes, so labels are in random order), a quarter
turn per class where the split asks for per-task rotation, and ``K + Q`` distinct examples
per class. The pool is gathered with one index, rotated in at most three masked ``rot90``
calls, and scaled to ``[0, 1]`` floats on the pool's device (then normalised per channel
where the dataset carries a mean and std); a float pool (the user's own tensors) is taken as
it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import SAMPLERS
from cmlearn.core.tasks.batch import TaskBatch, split_queries
from cmlearn.core.tasks.pool import ClassDataset


@dataclass(frozen=True)
class ClassificationSource:
    """``ways``-way ``shots``-shot tasks with ``queries`` (train), ``val_queries`` (val; 0: as
    test) or ``eval_queries`` (test) query examples per class."""

    dataset: ClassDataset
    ways: int
    shots: int
    queries: int
    eval_queries: int
    loss: str = "ce"
    metric: str = "accuracy"
    val_queries: int = 0

    def __post_init__(self) -> None:
        check_sizes(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    @property
    def out_features(self) -> int:
        return self.ways

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch:
        pool, classes = self.dataset.pool, self.dataset.splits[split]
        n, k = self.ways, self.shots
        q = split_queries(self, split)
        chosen = draw_classes(n_tasks, len(classes), n, gen)
        ids = classes.classes[chosen]
        turns = classes.rotations[chosen]
        drawn = torch.randint(0, 4, turns.shape, generator=gen)
        turns = torch.where(turns < 0, drawn, turns)
        picks = draw_members(pool.counts[ids], k + q, gen)
        index = pool.offsets[ids][..., None] + picks  # [T, N, K+Q]
        x = pool.images[index.to(pool.images.device)]  # [T, N, K+Q, C, H, W] uint8
        x = rotate(x, turns.to(x.device))
        if x.dtype == torch.uint8:  # image pools: bytes to [0, 1]; a float pool is used as is
            x = x.float().div_(255.0)
        if self.dataset.mean is not None and self.dataset.std is not None:
            x = normalize(x, self.dataset.mean, self.dataset.std)
        labels = torch.arange(n, device=x.device)
        support_y = labels.repeat_interleave(k).expand(n_tasks, n * k)
        query_y = labels.repeat_interleave(q).expand(n_tasks, n * q)
        return TaskBatch(
            x[:, :, :k].flatten(1, 2),
            support_y.contiguous(),
            x[:, :, k:].flatten(1, 2),
            query_y.contiguous(),
        )


def check_sizes(source, unit: str = "examples") -> None:
    """Refuse tasks a split cannot fill: fewer than ``ways`` classes, or a class with fewer than
    ``shots`` + the split's queries members (``source.dataset``: ``name``, ``splits[split]``,
    ``min_count``)."""
    dataset, ways, shots = source.dataset, source.ways, source.shots
    for split in ("train", "val", "test"):
        q = split_queries(source, split)
        n = len(dataset.splits[split])
        if ways > n:
            raise CmlearnError(
                f"{dataset.name}: {ways}-way tasks need {ways} classes but the {split} split "
                f"has {n}"
            )
        need, have = shots + q, dataset.min_count(split)
        if need > have:
            raise CmlearnError(
                f"{dataset.name}: {shots} shots + {q} queries = {need} {unit} per class, but a "
                f"{split} class has only {have}"
            )


def draw_classes(n_tasks: int, n_classes: int, ways: int, gen: torch.Generator) -> Tensor:
    """Positions ``[T, ways]`` of distinct classes per task, in random order (the labels)."""
    keys = torch.rand(n_tasks, n_classes, generator=gen)  # a random order of classes
    return keys.topk(ways, 1, largest=False).indices  # its first N


def draw_members(counts: Tensor, m: int, gen: torch.Generator) -> Tensor:
    """``m`` distinct member positions ``[T, N, m]`` of each class, whose sizes are ``counts``
    (``[T, N]``): the ``m`` smallest of uniform keys, the keys past a class's size masked."""
    most = int(counts.max())
    keys = torch.rand(*counts.shape, most, generator=gen)
    keys = keys.masked_fill(torch.arange(most, device=counts.device) >= counts[..., None], 2.0)
    return keys.topk(m, -1, largest=False).indices


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x - mean) / std`` per channel (dim -3), in place on the freshly gathered floats."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


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
    data = dataclasses.replace(dataset, pool=dataset.pool.to(device))
    return ClassificationSource(
        data, task.ways, task.shots, task.queries, task.eval_queries, val_queries=task.val_queries
    )
