"""The sinusoid regression task family of Finn et al. (2017), as used by CML (paper §4.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import DATASETS, SAMPLERS, NoOptions
from cmlearn.core.tasks.batch import TaskBatch, split_queries


@dataclass(frozen=True)
class SinusoidFamily:
    """y = A sin(x - φ) with A ~ U[amp], φ ~ U[phase], x ~ U[x_range]; loss is MSE."""

    amp: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    kind: str = "sinusoid"

    def sample(self, n_tasks: int, shots: int, queries: int, gen: torch.Generator) -> TaskBatch:
        """Draw ``n_tasks`` tasks with ``shots`` support and ``queries`` query points each."""
        if shots <= 0 or queries <= 0 or n_tasks <= 0:
            raise CmlearnError(
                f"sinusoid tasks need positive shots, queries and tasks "
                f"(got shots={shots}, queries={queries}, tasks={n_tasks})"
            )
        amp = _uniform(self.amp, (n_tasks, 1, 1), gen)
        phase = _uniform(self.phase, (n_tasks, 1, 1), gen)
        x = _uniform(self.x_range, (n_tasks, shots + queries, 1), gen)
        y = amp * torch.sin(x - phase)
        info = torch.cat([amp, phase], dim=-1).view(n_tasks, 2)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], info)

    @staticmethod
    def curve(info: Tensor, x: Tensor) -> Tensor:
        """Ground-truth values of the tasks described by ``info`` ([T, 2]) at points ``x``."""
        amp, phase = info[:, 0].view(-1, 1, 1), info[:, 1].view(-1, 1, 1)
        return amp * torch.sin(x - phase)


@DATASETS.register("sinusoid", NoOptions, "sinusoid regression (synthetic, Finn et al. 2017)")
def sinusoid(options: NoOptions, root: Path, cache_dir: Path) -> SinusoidFamily:
    return SinusoidFamily()


@dataclass(frozen=True)
class SinusoidSource:
    """Sinusoid tasks: ``shots`` support points, ``queries`` (train), ``val_queries`` (val; 0:
    as test) or ``eval_queries`` (test) query points."""

    shots: int
    queries: int
    eval_queries: int
    family: SinusoidFamily = field(default_factory=SinusoidFamily)
    device: torch.device = torch.device("cpu")
    input_shape: tuple[int, ...] = (1,)
    out_features: int = 1
    loss: str = "mse"
    metric: str = "mse"  # what evaluation reports; lower is better
    val_queries: int = 0

    def sample(self, n_tasks: int, gen: torch.Generator, split: str = "train") -> TaskBatch:
        queries = split_queries(self, split)
        return self.family.sample(n_tasks, self.shots, queries, gen).to(self.device)


@SAMPLERS.register("sinusoid")
def sinusoid_source(family: SinusoidFamily, task, device: torch.device) -> SinusoidSource:
    return SinusoidSource(
        task.shots, task.queries, task.eval_queries, family, device, val_queries=task.val_queries
    )


def _uniform(bounds: tuple[float, float], shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    lo, hi = bounds
    return torch.rand(shape, generator=gen) * (hi - lo) + lo
