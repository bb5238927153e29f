"""The outer loop: Adam, validation on fixed tasks, best checkpoint, exact resume.

A run folder holds::

    config.json      the resolved configuration
    metrics.jsonl    one JSON object per log / validation / analysis event
    checkpoint.pt    everything needed to resume (model, co-learner, step sizes, Adam, step)
    model.pt         the best-validation inference model: ψ, θ and step sizes, no co-learner
    colearner.pt     the co-learner ϕ from the same step as model.pt (for CML† evaluation)

Meta-batch ``t`` is drawn from a generator seeded by ``(seed, t)``, so a resumed run sees
exactly the tasks an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cmlearn import CmlearnError
from cmlearn.analysis import gradient_split
from cmlearn.build import build_learner, build_source
from cmlearn.config import Config
from cmlearn.engine import Learner
from cmlearn.evaluate import VAL, fixed_tasks, scores
from cmlearn.tasks.batch import generator

CONFIG, METRICS, CHECKPOINT, MODEL, COLEARNER = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "model.pt",
    "colearner.pt",
)


class Interrupted(CmlearnError):
    """Training stopped on request (Ctrl-C); the checkpoint holds every completed step."""


def atomic_save(obj: object, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lower_is_better(metric: str) -> bool:
    return metric != "accuracy"


@dataclass
class RunState:
    step: int = 0
    best: float = math.nan
    best_step: int = -1
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # sums, count


def make_optimizer(learner: Learner, cfg: Config) -> torch.optim.Adam:
    """ψ, θ and learned step sizes at β; ϕ in its own param group (its own lr if set)."""
    net = learner.net
    main = list(net.model.parameters()) + [
        s for s in learner.step_sizes.values() if s.requires_grad
    ]
    groups = [{"params": main, "lr": cfg.train.meta_lr, "name": "meta"}]
    if learner.co.trained:
        co_lr = cfg.train.colearner_lr or cfg.train.meta_lr
        groups.append(
            {"params": list(net.colearner.parameters()), "lr": co_lr, "name": "colearner"}
        )
    return torch.optim.Adam(groups)


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


def train(
    cfg: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
) -> dict:
    """Meta-train ``cfg`` into run folder ``out``; returns a summary dict.

    ``should_stop(step)`` is polled after every step (Ctrl-C sets the same flag); a stop
    saves the checkpoint and raises ``Interrupted``. A non-finite loss stops the run with a
    ``CmlearnError``, leaving the best checkpoint and the last good checkpoint in place.
    """
    out = Path(out)
    if (out / CHECKPOINT).exists() and not resume:
        raise CmlearnError(f"{out} already holds a run; pass --resume or choose another --out")
    if resume and not (out / CHECKPOINT).exists():
        raise CmlearnError(f"no checkpoint to resume in {out}")
    cfg.validate()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    source = build_source(cfg)
    learner = build_learner(cfg, source)
    optimizer = make_optimizer(learner, cfg)
    state = RunState()
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        state = _load_checkpoint(out / CHECKPOINT, learner, optimizer)
        if cfg.train.steps < state.step:
            raise CmlearnError(
                f"{out} is already at step {state.step}; --steps must be at least that"
            )
        _truncate_metrics(out / METRICS, state.step)
    (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    val = fixed_tasks(source, cfg.train.val_tasks, cfg.eval.seed, VAL, "val")
    better = (lambda a, b: a < b) if lower_is_better(source.metric) else (lambda a, b: a > b)
    total = cfg.train.steps
    stop = _StopFlag()
    bar = tqdm(
        total=total,
        initial=state.step,
        disable=not progress,
        dynamic_ncols=True,
        desc=f"{cfg.algorithm}+{cfg.colearner.mode}",
    )
    started = time.perf_counter()
    with stop, open(out / METRICS, "a" if resume else "w") as log:

        def emit(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()

        while state.step < total:
            step = state.step
            batch = source.sample(cfg.task.meta_batch, generator(cfg.train.seed, step), "train")
            loss, terms = learner.meta_objective(batch, step / max(total, 1))
            if not torch.isfinite(loss):
                bar.close()
                raise CmlearnError(
                    f"loss became {loss.item()} at step {step}; stopped. The best checkpoint "
                    f"(step {state.best_step}) and the last checkpoint are kept in {out}"
                )
            optimizer.zero_grad(set_to_none=True)
            if (
                cfg.train.analysis_every
                and step % cfg.train.analysis_every == 0
                and learner.co.active
            ):
                split = gradient_split(
                    learner.params(), terms["meta"].mean(), learner.co.gamma * terms["co"].mean()
                )
                emit({"step": step, "gradients": split})
            loss.backward()
            optimizer.step()
            state.step += 1
            state.window[0] += terms["meta"].mean().item()
            state.window[1] += terms["co"].mean().item() if "co" in terms else 0.0
            state.window[2] += 1
            bar.update(1)
            if state.step % cfg.train.log_every == 0 or state.step == total:
                n = state.window[2]
                record = {"step": state.step, "train_loss": state.window[0] / n}
                if learner.co.active:
                    record["train_co_loss"] = state.window[1] / n
                emit(record)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}")
                state.window = [0.0, 0.0, 0]
            if state.step % cfg.train.val_every == 0 or state.step == total:
                value = float(scores(learner, val, source.metric).mean())
                emit({"step": state.step, f"val_{source.metric}": value})
                if state.best_step < 0 or better(value, state.best):
                    state.best, state.best_step = value, state.step
                    _save_best(learner, cfg, out, state.step)
                atomic_save(_checkpoint(learner, optimizer, state, cfg), out / CHECKPOINT)
            if stop.requested or (should_stop is not None and should_stop(state.step)):
                atomic_save(_checkpoint(learner, optimizer, state, cfg), out / CHECKPOINT)
                bar.close()
                raise Interrupted(
                    f"interrupted at step {state.step}; resume with: "
                    f"cmlearn train --out {out} --resume"
                )
    bar.close()
    return {
        "run": str(out),
        "steps": state.step,
        "best_step": state.best_step,
        f"best_val_{source.metric}": state.best,
        "seconds": time.perf_counter() - started,
    }


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
        raise CmlearnError(f"corrupt {path}: {_first_line(err)}") from None


def read_state(path: Path) -> dict:
    """A checkpoint file; a missing, truncated or foreign one is a clear error."""
    if not path.exists():
        raise CmlearnError(f"missing {path}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # torch.load raises many types for a damaged file
        raise CmlearnError(f"corrupt checkpoint {path}: {_first_line(err)}") from None


def load_run(run: Path, checkpoint: str = MODEL) -> tuple[Config, Learner]:
    """Rebuild a trained learner from a run folder: the best model (and co-learner, if any)."""
    run = Path(run)
    cfg = read_config(run)
    learner = build_learner(cfg, build_source(cfg))
    saved = read_state(run / checkpoint)
    co = read_state(run / COLEARNER) if learner.net.colearner is not None else None
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
        raise CmlearnError(f"run {run} does not match its config: {_first_line(err)}") from None
    return cfg, learner


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _save_best(learner: Learner, cfg: Config, out: Path, step: int) -> None:
    atomic_save(inference_state(learner, cfg, step), out / MODEL)
    if learner.net.colearner is not None:
        atomic_save(
            {"step": step, "colearner": learner.net.colearner.state_dict()}, out / COLEARNER
        )


def _checkpoint(
    learner: Learner, optimizer: torch.optim.Optimizer, state: RunState, cfg: Config
) -> dict:
    return {
        "config": cfg.to_dict(),
        "state": vars(state),
        "net": learner.net.state_dict(),
        "step_sizes": {k: v.detach() for k, v in learner.step_sizes.items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def _load_checkpoint(path: Path, learner: Learner, optimizer: torch.optim.Optimizer) -> RunState:
    ckpt = read_state(path)
    try:
        learner.net.load_state_dict(ckpt["net"])
        for k, v in ckpt["step_sizes"].items():
            learner.step_sizes[k].data.copy_(v)
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = RunState(**ckpt["state"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CmlearnError(f"cannot resume from {path}: {_first_line(err)}") from None
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only what the checkpoint at ``step`` had logged, so a resumed log has no duplicates.

    Gradient-analysis records are written before their step's update, so the one for ``step``
    is written again after resuming; a half-written last line (a killed process) is dropped.
    """
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] < step or (record["step"] == step and "gradients" not in record):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
