"""A batch of tasks as stacked tensors with a leading task dimension."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


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

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )


def task_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``(run seed, step)``.

    Every meta-batch is drawn from its own generator seeded by ``task_seed(seed, step)``, so a
    resumed run sees exactly the tasks an uninterrupted run would, with no generator state to
    carry around.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(task_seed(*keys))


class TaskSource(Protocol):
    """Where tasks come from: a seeded sampler plus what a model needs to know about them."""

    in_features: int
    out_features: int
    loss: str  # "mse" or "ce"
    metric: str  # what evaluation reports: "mse" (lower is better) or "accuracy"

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch: ...
