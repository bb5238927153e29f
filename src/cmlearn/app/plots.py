"""PNG figures: the paper's Fig. 2 view of sinusoid fits, and learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cmlearn.app.analysis.figures import readable_axes  # noqa: E402
from cmlearn.core.engine import Learner  # noqa: E402
from cmlearn.core.tasks import SinusoidFamily, TaskBatch  # noqa: E402


def sinusoid_fits(
    learners: dict[str, Learner], tasks: TaskBatch, path: Path, steps: int = 0, grid: int = 200
) -> Path:
    """For each task: ground truth, the K support points and each method's adapted fit."""
    n = tasks.n_tasks
    x = torch.linspace(-5, 5, grid).view(1, grid, 1).expand(n, grid, 1)
    dense = TaskBatch(
        tasks.support_x, tasks.support_y, x, SinusoidFamily.curve(tasks.info, x), tasks.info
    )
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(x[i, :, 0], dense.query_y[i, :, 0], color="black", lw=2, label="ground truth")
        ax.scatter(
            tasks.support_x[i, :, 0],
            tasks.support_y[i, :, 0],
            color="tab:red",
            zorder=5,
            label=f"{tasks.support_x.shape[1]} support points",
        )
        for name, learner in learners.items():
            pred = predictions(learner, dense, steps)
            ax.plot(x[i, :, 0], pred[i, :, 0], lw=1.5, ls="--", label=name)
        amp, phase = tasks.info[i].tolist()
        ax.set_title(f"A={amp:.2f}, φ={phase:.2f}")
        ax.set_xlabel("x")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def predictions(learner: Learner, tasks: TaskBatch, steps: int = 0) -> torch.Tensor:
    """The meta-learner's query predictions after adaptation (the CML / MAML inference)."""
    return learner.evaluate(tasks, "cml", steps or None, return_outputs=True)["output"]


def learning_curves(runs: dict[str, Path], path: Path) -> Path:
    """Training loss and validation metric against meta-iterations, one line per run."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        records = [
            json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
        ]
        train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
        val_key = next((k for r in records for k in r if k.startswith("val_")), None)
        if train:
            ax_train.plot(*zip(*train, strict=True), label=name, lw=1)
        if val_key:
            val = [(r["step"], r[val_key]) for r in records if val_key in r]
            ax_val.plot(*zip(*val, strict=True), label=name, marker="o", ms=3)
            ax_val.set_ylabel(val_key.replace("_", " "))
    ax_train.set_ylabel("meta-training query loss")
    for ax in (ax_train, ax_val):
        ax.set_xlabel("meta-iteration")
        ax.set_yscale("log")
        readable_axes(ax, log_y=True)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
