"""Your own regression family, given as a function: MAML against CML on the same tasks.

The family is ``y = a·x² + b·x + c`` with each task's coefficients drawn from the seeded
generator, sampled as cmlearn samples the sinusoid. ``python examples/own_regression.py``
(``--tiny`` for a smoke run) trains both, prints the paired comparison (test MSE: lower is
better) and leaves run folders ``cmlearn eval`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import cmlearn


def quadratics(n_tasks: int, n_points: int, gen: torch.Generator):
    """``n_tasks`` tasks of ``n_points`` points each; everything drawn from ``gen``."""
    coef = torch.rand(n_tasks, 1, 3, generator=gen) * 2 - 1  # a, b, c in [-1, 1]
    x = torch.rand(n_tasks, n_points, 1, generator=gen) * 4 - 2  # x in [-2, 2]
    y = coef[..., :1] * x**2 + coef[..., 1:2] * x + coef[..., 2:]
    return x, y, coef.squeeze(1)  # info: the task's coefficients (for your plots)


def family() -> cmlearn.RegressionFamily:
    """The data part a run folder names: the family and its shapes."""
    return cmlearn.RegressionFamily(quadratics, input_shape=(1,), out_features=1)


def mlp(hidden: int = 40) -> nn.Sequential:
    """A plain torch MLP; its last layer is the head, the co-learner reads the layer before."""
    return nn.Sequential(
        nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--steps", type=int, help="meta-training steps (default: a full run)")
    parser.add_argument("--out", type=Path, default=Path("runs/own-regression"))
    args = parser.parse_args()
    steps, tasks = (4, 20) if args.tiny else (3000, 600)
    steps = args.steps or steps
    cfg = cmlearn.experiment(
        mlp,
        family,
        shots=5,
        queries=10,
        eval_queries=50,
        meta_batch=8,
        gamma=0.2,
        steps=steps,
        val_every=max(steps // 10, 2),
        val_tasks=tasks // 4,
        test_tasks=tasks,
    )
    report = cmlearn.compare_methods(cfg, ["maml", "cml"], [0], args.out, dagger="none")
    print(cmlearn.format_table(report))


if __name__ == "__main__":
    main()
