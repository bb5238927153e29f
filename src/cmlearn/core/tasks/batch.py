"""A batch of tasks as stacked tensors with a leading task dimension."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from cmlearn.core.errors import CmlearnError


@dataclass(frozen=True)
class TaskBatch:
    """Support and query sets of ``n_tasks`` tasks, all tensors shaped ``[T, n, ...]``.

    ``info`` carries optional per-task descriptors (e.g. sinusoid amplitude and phase) that the
    engine ignores but plots and analyses use.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: Tensor | None = None

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, index: slice | Tensor) -> TaskBatch:
        """Select tasks, keeping the task dimension (used to chunk evaluation)."""
        return TaskBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )

    def clone(self) -> TaskBatch:
        """Compact copies (a slice of a larger batch otherwise keeps all of it alive)."""
        return TaskBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).clone()
                for f in fields(self)
            }
        )

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )


STREAMS = ("init", "colearner", "train", "val", "test", "dropout", "analysis")


def task_seed(stream: str, *keys: int) -> int:
    """A 63-bit seed for ``keys`` (e.g. run seed and step) in the random stream ``stream``.

    Every stream (model init, co-learner init, training batches, validation tasks, test tasks,
    dropout, post-hoc analyses) has its own domain tag, and the key tuple is hashed with its
    length, so no two streams and no two key tuples can share a seed, whatever the seeds.
    Meta-batch ``t`` is drawn from its own generator seeded by ``("train", seed, t)``, so a
    resumed run sees exactly the tasks an uninterrupted run would, with no generator state to
    carry around.
    """
    if stream not in STREAMS:
        raise CmlearnError(f"unknown random stream {stream!r}; choose from {', '.join(STREAMS)}")
    text = f"cmlearn/{stream}/{len(keys)}/" + "/".join(str(int(k)) for k in keys)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def generator(stream: str, *keys: int) -> torch.Generator:
    """A fresh generator seeded by ``task_seed(stream, *keys)``: tasks drawn from it depend on
    the stream and keys alone. Example: ``tasks.sample(4, generator("train", seed, step))``."""
    return torch.Generator().manual_seed(task_seed(stream, *keys))


class seeded:
    """Seed torch's global generator from ``(stream, seed)`` for a block (layer initialisers
    draw from it), and restore its state after: building a model leaves no trace."""

    def __init__(self, stream: str, seed: int) -> None:
        self.seed = task_seed(stream, seed)

    def __enter__(self) -> None:
        self.state = torch.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.state)


class TaskSource(Protocol):
    """Where tasks come from: a seeded sampler plus what a model needs to know about them."""

    input_shape: tuple[int, ...]  # one example's shape, e.g. (1,) or (1, 28, 28)
    out_features: int
    loss: str  # "mse" or "ce"
    metric: str  # what evaluation reports: "mse" (lower is better) or "accuracy"

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch: ...


def split_queries(source, split: str) -> int:
    """Query examples per class (per task for regression) in a ``split``'s tasks: ``queries``
    in meta-training, ``val_queries`` in validation (0: as at test), ``eval_queries`` at test."""
    if split == "train":
        return source.queries
    if split == "val" and source.val_queries:
        return source.val_queries
    return source.eval_queries
