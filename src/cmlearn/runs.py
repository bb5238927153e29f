"""The run folder: configuration, metrics log, checkpoints, the inference model, resume.

A run folder holds::

    config.json      the resolved configuration
    metrics.jsonl    one JSON object per log / validation / analysis event
    checkpoint.pt    everything needed to resume (model, co-learner, step sizes, Adam, step)
    model.pt         the best-validation inference model: ψ, θ and step sizes, no co-learner
    colearner.pt     the co-learner ϕ from the same step as model.pt (for CML† evaluation)

Every file is written to a temporary name and renamed (``cmlearn.files``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmlearn import CmlearnError
from cmlearn.build import build_learner, build_source
from cmlearn.config import Config
from cmlearn.engine import Learner
from cmlearn.files import atomic_save, atomic_text
from cmlearn.runtime import Runtime

CONFIG, METRICS, CHECKPOINT, MODEL, COLEARNER = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "model.pt",
    "colearner.pt",
)


@dataclass
class RunState:
    step: int = 0
    best: float = math.nan
    best_step: int = -1
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # sums, count


class RunFolder:
    """One run's files. Loading anything damaged is a one-line ``CmlearnError``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def read_config(self) -> Config:
        return read_config(self.path)

    def write_config(self, cfg: Config) -> None:
        atomic_text(json.dumps(cfg.to_dict(), indent=2) + "\n", self.path / CONFIG)

    def save_checkpoint(self, learner: Learner, optimizer, state: RunState, cfg: Config) -> None:
        atomic_save(
            {
                "config": cfg.to_dict(),
                "state": vars(state),
                "net": learner.net.state_dict(),
                "step_sizes": {k: v.detach() for k, v in learner.step_sizes.items()},
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            self.path / CHECKPOINT,
        )

    def load_checkpoint(self, learner: Learner, optimizer) -> RunState:
        path = self.path / CHECKPOINT
        ckpt = read_state(path, learner_device(learner))
        try:
            learner.net.load_state_dict(ckpt["net"])
            for k, v in ckpt["step_sizes"].items():
                learner.step_sizes[k].data.copy_(v)
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            state = RunState(**ckpt["state"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CmlearnError(f"cannot resume from {path}: {first_line(err)}") from None
        return state

    def save_best(self, learner: Learner, cfg: Config, step: int) -> None:
        atomic_save(inference_state(learner, cfg, step), self.path / MODEL)
        if learner.net.colearner is not None:
            atomic_save(
                {"step": step, "colearner": learner.net.colearner.state_dict()},
                self.path / COLEARNER,
            )

    def truncate_metrics(self, step: int) -> None:
        """Keep only what the checkpoint at ``step`` had logged, so a resumed log has no
        duplicates. Gradient-analysis records are written before their step's update, so the
        one for ``step`` is written again after resuming; a half-written last line (a killed
        process) is dropped."""
        path = self.path / METRICS
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                record_step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if record_step < step or (record_step == step and "gradients" not in record):
                keep.append(line)
        atomic_text("".join(line + "\n" for line in keep), path)


def inference_state(learner: Learner, cfg: Config, step: int) -> dict:
    """The saved inference model: exactly MAML's parameters (and step sizes), no co-learner."""
    return {
        "config": cfg.to_dict(),
        "step": step,
        "model": learner.net.model.state_dict(),
        "step_sizes": {
            k: v.detach() for k, v in learner.step_sizes.items() if not k.startswith("colearner.")
        },
    }


def learner_device(learner: Learner) -> torch.device:
    return next(learner.net.parameters()).device


def read_config(run: Path) -> Config:
    """The resolved configuration of a run folder; a missing or corrupt one is a clear error."""
    path = Path(run) / CONFIG
    if not path.exists():
        raise CmlearnError(f"{run} is not a run folder (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Config.from_dict(data)
    except (OSError, ValueError, CmlearnError) as err:
        raise CmlearnError(f"corrupt {path}: {first_line(err)}") from None


def read_state(path: Path, device: torch.device | None = None) -> dict:
    """A checkpoint file (tensors only: ``weights_only``); a missing, truncated or foreign one
    is a clear error."""
    if not path.exists():
        raise CmlearnError(f"missing {path}")
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch.load raises many types for a damaged file
        raise CmlearnError(f"corrupt checkpoint {path}: {first_line(err)}") from None


def load_run(
    run: Path, checkpoint: str = MODEL, runtime: Runtime | None = None
) -> tuple[Config, Learner]:
    """Rebuild a trained learner from a run folder: the best model (and co-learner, if any)."""
    run = Path(run)
    runtime = runtime or Runtime()
    cfg = read_config(run)
    learner = build_learner(cfg, build_source(cfg, runtime), runtime.device)
    saved = read_state(run / checkpoint, runtime.device)
    co = read_state(run / COLEARNER, runtime.device) if learner.net.colearner is not None else None
    if co is not None and co.get("step") != saved.get("step"):
        raise CmlearnError(
            f"{run}: {checkpoint} (step {saved.get('step')}) and {COLEARNER} "
            f"(step {co.get('step')}) come from different steps; the run was cut between saves"
        )
    try:
        learner.net.model.load_state_dict(saved["model"])
        for k, v in saved["step_sizes"].items():
            learner.step_sizes[k].data.copy_(v)
        if co is not None:
            learner.net.colearner.load_state_dict(co["colearner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CmlearnError(f"run {run} does not match its config: {first_line(err)}") from None
    return cfg, learner


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
