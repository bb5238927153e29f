"""The outer loop: Adam, validation on fixed tasks, best checkpoint, exact resume.

``outer_step`` is one meta-update (meta-gradient, accumulated over task chunks if asked,
taken at a SAM-perturbed point for Sharp-MAML's outer SAM, clamped if asked, then the
optimiser step); ``train`` is the loop around it and owns the run folder (``cmlearn.app.runs``):
the cosine meta-lr and the top-k validation checkpoints of MAML++ live there. Meta-batch
``t`` is drawn from the stream ``("train", seed, t)``, so a resumed run sees exactly the tasks
an uninterrupted one would; every schedule is a function of the step, so it resumes exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cmlearn.app.analysis import body_gradients, split_stats
from cmlearn.app.build import build_learner, build_source
from cmlearn.app.config import Config
from cmlearn.app.distributed import Distributed, join
from cmlearn.app.evaluate import (
    CHUNK,
    EvalSpec,
    ensemble_paths,
    fixed_tasks,
    lower_is_better,
    member_key,
    member_state,
    read_member,
    scores,
)
from cmlearn.app.files import atomic_save, writing
from cmlearn.app.logs import open_sink
from cmlearn.app.progress import Progress
from cmlearn.app.runs import (
    CHECKPOINT,
    COLEARNER,
    CONFIG,
    METRICS,
    MODEL,
    RunFolder,
    RunState,
    stopped_before_config,
)
from cmlearn.app.runtime import Runtime
from cmlearn.core.algorithms.rule import SAM_EPS, Stage
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError, Interrupted
from cmlearn.core.models.cooperative import parameter_counts
from cmlearn.core.tasks import TaskBatch, generator, task_seed


def base_lrs(cfg: Config) -> dict[str, float]:
    """Each param group's base meta-lr: ψ, θ and learned step sizes at β, ϕ at its own."""
    return {"meta": cfg.train.meta_lr, "colearner": cfg.train.colearner_lr or cfg.train.meta_lr}


def make_optimizer(learner: Learner, cfg: Config) -> torch.optim.Adam:
    """ψ, θ and learned step sizes at β; ϕ in its own param group (its own lr if set)."""
    net = learner.net
    lrs = base_lrs(cfg)
    main = list(net.model.parameters()) + [
        s for s in learner.step_sizes.values() if s.requires_grad
    ]
    groups = [{"params": main, "lr": lrs["meta"], "name": "meta"}]
    if learner.co.trained:
        groups.append(
            {
                "params": list(net.colearner.parameters()),
                "lr": lrs["colearner"],
                "name": "colearner",
            }
        )
    return torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)


def scheduled_lr(cfg: Config, base: float, step: int) -> float:
    """The meta-lr of update ``step`` (0-based): ``base``, or MAML++'s cosine annealing
    (Antoniou et al. 2019) stepped once per epoch, e = step // epoch_steps, over T = all epochs
    (⌈steps / epoch_steps⌉): η_min + (base − η_min)·(1 + cos(π·e/T))/2, torch's
    ``CosineAnnealingLR`` closed form (MAML++ steps it with the epoch number)."""
    if cfg.train.lr_schedule == "constant":
        return base
    epochs = max(math.ceil(cfg.train.steps / cfg.train.epoch_steps), 1)
    epoch = step // cfg.train.epoch_steps
    low = cfg.train.min_lr
    return low + (base - low) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def set_lr(optimizer: torch.optim.Optimizer, cfg: Config, step: int) -> None:
    """Set every group's lr for update ``step``: a function of the step alone, so a resumed
    run has exactly the uninterrupted run's rates (no scheduler state to save)."""
    lrs = base_lrs(cfg)
    for group in optimizer.param_groups:
        group["lr"] = scheduled_lr(cfg, lrs[group["name"]], step)


@dataclass
class StepResult:
    """What one outer step reports: mean meta and co query losses, and (on request) the
    per-layer gradient analysis."""

    loss: float
    meta: float
    co: float | None
    analysis: dict | None = None


def meta_gradient(
    learner: Learner,
    batch: TaskBatch,
    progress: Stage | float,
    chunk: int = 0,
    analyse: bool = False,
    dist: Distributed | None = None,
) -> StepResult:
    """Accumulate the meta-gradient of ``batch`` into ``.grad``, ``chunk`` tasks at a time.

    Each chunk's mean loss is weighted by its share of the batch, so the accumulated gradient
    is that of the whole batch's mean loss (tested), while only one chunk's graph is alive at
    a time: a second-order meta-batch that does not fit at once still runs. Under
    ``torch.distributed`` (``dist``) this rank computes only its share of the tasks, weighted
    the same way, and one all-reduce sums gradients and losses over the ranks (call it with
    cleared gradients): every rank ends with the whole batch's gradient and mean losses.
    """
    n = batch.n_tasks
    first, end = dist.share(n) if dist is not None else (0, n)
    size = chunk if 0 < chunk < end - first else end - first
    total = meta = co = 0.0
    grads: list[dict[str, Tensor]] | None = None  # meta (and co) body gradients
    for start in range(first, end, size):
        part = batch[start : min(start + size, end)]
        weight = part.n_tasks / n
        loss, terms = learner.meta_objective(part, progress)
        if dist is None and not torch.isfinite(loss):  # distributed: checked on the sum
            raise FloatingPointError(loss.item())
        if analyse:
            params = learner.params()
            parts = [body_gradients(params, weight * terms["meta"].mean())]
            if learner.co.active:
                co_loss = weight * learner.co.gamma * terms["co"].mean()
                parts.append(body_gradients(params, co_loss))
            if grads is not None:
                parts = [
                    {k: acc[k] + v for k, v in part.items()}
                    for acc, part in zip(grads, parts, strict=True)
                ]
            grads = parts
        (loss * weight if weight != 1.0 else loss).backward()
        total += weight * loss.item()
        meta += weight * terms["meta"].mean().item()
        co += weight * terms["co"].mean().item() if "co" in terms else 0.0
    if dist is not None:
        total, meta, co = _reduce(learner, dist, [total, meta, co], grads)
        if not math.isfinite(total):
            raise FloatingPointError(total)
    return StepResult(
        total,
        meta,
        co if learner.co.active else None,
        split_stats(grads[0], grads[1] if len(grads) > 1 else None) if grads else None,
    )


def _reduce(
    learner: Learner, dist: Distributed, stats: list[float], grads: list[dict] | None
) -> list[float]:
    """Sum this rank's gradients, ``stats`` and any analysis gradients over the ranks."""
    params = (*learner.net.parameters(), *learner.step_sizes.values())
    tensors = [p.grad for p in params if p.grad is not None]
    tensors += [g for part in grads or () for g in part.values()]
    return dist.reduce(tensors, stats)


def outer_step(
    learner: Learner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    progress: Stage | float,
    chunk: int = 0,
    analyse: bool = False,
    dist: Distributed | None = None,
    sam_rho: float = 0.0,
    grad_clamp: float = 0.0,
) -> StepResult:
    """One meta-update. A wrapper replaces this, not the loop; under ``torch.distributed``
    the loop passes ``dist`` on, for ``meta_gradient``.

    ``sam_rho > 0``: Sharp-MAML's outer SAM (``sharpness_aware``); the result (the logged
    losses and the gradient analysis) is the unperturbed point's. ``grad_clamp > 0``: every
    gradient element the optimiser steps with is clamped to ±``grad_clamp`` (MAML++).
    """
    optimizer.zero_grad(set_to_none=True)

    def gradient(analysed: bool) -> StepResult:
        return meta_gradient(learner, batch, progress, chunk, analysed, dist)

    if sam_rho > 0:
        result = sharpness_aware(optimizer, gradient, analyse, sam_rho)
    else:
        result = gradient(analyse)
    if grad_clamp > 0:
        for p in stepped(optimizer):
            p.grad.clamp_(-grad_clamp, grad_clamp)
    optimizer.step()
    return result


def stepped(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The tensors the optimiser steps that have a gradient."""
    return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def sharpness_aware(
    optimizer: torch.optim.Optimizer,
    gradient: Callable[[bool], StepResult],
    analyse: bool,
    rho: float,
) -> StepResult:
    """SAM around a meta-gradient (Sharp-MAML's outer step, Abbas et al., ICML 2022).

    ``gradient(analyse)`` fills ``.grad`` with the meta-gradient G at θ (every inner loop
    run). θ moves to θ + ρ·G/(‖G‖₂ + 1e-12), the norm global over every tensor the optimiser
    steps (ψ, θ, learned step sizes and a trained co-learner ϕ: SAM wraps the optimiser, as
    Sharp-MAML's does), the whole meta-gradient is computed again there on the same tasks
    (every inner loop re-run from the perturbed point), and θ is restored exactly (copied
    back, not subtracted) with that gradient left in ``.grad`` for the optimiser. Returns the
    first (unperturbed) result: the loss that is logged. Chunks and ranks compose: each pass
    is a whole ``meta_gradient``, whose all-reduce gives every rank the same G and ε.
    """
    result = gradient(analyse)
    params = stepped(optimizer)
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        scale = rho / (norm + SAM_EPS)
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.add_(p.grad * scale)
    try:
        optimizer.zero_grad(set_to_none=True)
        gradient(False)
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)
    return result


def describe_counts(counts: dict[str, int]) -> str:
    """One line of the parameter counts of the CML paper's Table 4 columns."""
    text = f"parameters: body {counts['body']:,} + head {counts['head']:,}"
    if counts["colearner"]:
        text += (
            f" + co-learner {counts['colearner']:,} = {counts['train']:,} in training; "
            f"saved inference model {counts['test']:,}; CML† {counts['test_dagger']:,}"
        )
    else:
        text += f" = {counts['test']:,}"
    return text


def train(
    cfg: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    runtime: Runtime | None = None,
    step_fn: Callable[..., StepResult] = outer_step,
    explain: bool = False,
) -> dict:
    """Meta-train ``cfg`` into run folder ``out``; returns a summary dict. ``explain``: a
    resumed run with nothing left to train says so on stderr, and how to train on (the
    ``cmlearn train`` command; ``compare`` reuses finished runs without a word).

    ``should_stop(step)`` is polled after every step (Ctrl-C sets the same flag); a stop
    saves the checkpoint and raises ``Interrupted``. A non-finite loss stops the run with a
    ``CmlearnError``, leaving the best checkpoint and the last good checkpoint in place.

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this: each computes its share of
    every meta-batch (``cmlearn.app.distributed``), rank 0 alone locks and writes the folder,
    validates and shows progress, and all ranks stop after the same step (``should_stop`` is
    then asked during the step's all-reduce, about the step count the step will reach).

    Ctrl-C and SIGTERM are caught from before the folder is created: one arriving while the
    run loads its data stops it once its first checkpoint is written (a saved, resumable
    folder), never half-way through writing it.
    """
    folder = RunFolder(out)
    runtime = runtime or Runtime()
    existed, had_config = folder.path.exists(), (folder.path / CONFIG).exists()
    with _StopFlag() as stop, join(runtime.device) as dist:
        if dist.main:
            folder.claim(resume)
        with folder.lock() if dist.main else nullcontext():
            runtime = dist.runtime(runtime)
            try:
                run = _open(cfg, folder, resume, runtime, dist)
            except Interrupted:
                raise  # stopped while loading: the folder stays, to be resumed
            except CmlearnError:  # refused (the data, the model): leave no half-started folder
                if dist.main and not had_config and not folder.has_checkpoint():
                    folder.unstart(existed)
                raise
            if explain and dist.main and run.resume:
                _say_if_finished(run)
            return _loop(run, progress, should_stop, step_fn, stop)


@dataclass
class _Run:
    """An opened run: what the loop's pieces share."""

    cfg: Config
    folder: RunFolder
    resume: bool
    dist: Distributed
    source: object
    learner: Learner
    optimizer: torch.optim.Optimizer
    state: RunState

    @property
    def out(self) -> Path:
        return self.folder.path


def _open(
    cfg: Config, folder: RunFolder, resume: bool, runtime: Runtime, dist: Distributed
) -> _Run:
    """Check the folder against ``resume``, write the configuration, build the learner and
    restore the checkpoint (or write the first one, at step 0)."""
    out = folder.path
    if dist.main:
        resume = _check_folder(folder, resume)
    if dist.main and not resume:  # first, so a run stopped while it loads data can still be resumed
        folder.write_config(cfg)
    resume = dist.agree(resume)  # the other ranks follow rank 0's reading of the folder
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    source = build_source(cfg, runtime)
    learner = build_learner(cfg, source, runtime.device)
    optimizer = make_optimizer(learner, cfg)
    state = RunState()
    if resume:
        _check_resume(folder.read_config(), cfg)  # its reasons first, then any other change
        state = folder.load_checkpoint(learner, optimizer, cfg)
        if cfg.train.steps < state.step:
            raise CmlearnError(
                f"{out} is already at step {state.step}; --steps must be at least that"
            )
        note = folder.truncate_metrics(state) if dist.main else None
        if note:
            print(f"cmlearn: {note}", file=sys.stderr)
        if dist.main:
            folder.write_config(cfg)
    else:  # a checkpoint from the start: --resume works on any folder train created
        state.records = 0
        # dropout draws from the global generator: seeded by the run, restored on resume
        torch.manual_seed(task_seed("dropout", cfg.train.seed))
        if dist.main:
            folder.save_checkpoint(learner, optimizer, state, cfg)
    return _Run(cfg, folder, resume, dist, source, learner, optimizer, state)


def _check_folder(folder: RunFolder, resume: bool) -> bool:
    """Whether the run resumes: a checkpoint is refused without ``--resume``; ``--resume``
    without a checkpoint starts the saved configuration only in a folder stopped before its
    first checkpoint (a ``config.json`` and nothing written after it)."""
    out = folder.path
    if folder.has_checkpoint():
        if not resume:
            raise CmlearnError(f"{out} already holds a run; pass --resume or choose another --out")
        return True
    later = [name for name in (METRICS, MODEL, COLEARNER) if (out / name).exists()]
    if later:  # written only after the first checkpoint: the checkpoint was removed
        raise CmlearnError(
            f"{out} holds {', '.join(later)} but no {CHECKPOINT}: refusing to restart it "
            f"from step 0 over them (restore {CHECKPOINT}, or train into another --out)"
        )
    if resume and not (out / CONFIG).exists():
        raise CmlearnError(stopped_before_config(out))
    return False  # stopped before its first step: start the saved configuration


def _loop(
    run: _Run,
    progress: bool,
    should_stop: Callable[[int], bool] | None,
    step_fn: Callable[..., StepResult],
    stop: _StopFlag,
) -> dict:
    """Train ``run`` from its step to ``train.steps``: step, log, validate, checkpoint."""
    cfg, dist, state, learner, out = run.cfg, run.dist, run.state, run.learner, run.out
    if progress and dist.main:  # the CML paper's Table 4 columns, once the run has loaded
        print(f"cmlearn: {out}: {describe_counts(parameter_counts(learner.net))}", file=sys.stderr)
    dist.check_start(learner, state.step)
    if dist.active and cfg.train.patience:
        raise CmlearnError("train.patience (early stopping) runs in one process; drop --nproc")
    validation = _Validation(run) if dist.main else None
    total = cfg.train.steps

    def asked(step: int) -> bool:  # Ctrl-C, SIGTERM or the caller's should_stop
        return stop.requested or (should_stop is not None and should_stop(step))

    dist.vote = lambda: asked(state.step + 1)  # asked during the step's all-reduce
    options = _step_options(run)
    metrics = out / METRICS if dist.main else Path(os.devnull)  # rank 0 logs
    progress = progress and dist.main
    bar = Progress(total, state.step, f"{cfg.algorithm}+{cfg.colearner.mode}", progress)
    if validation is not None:
        validation.bar = bar
    started = time.perf_counter()
    clock = _Clock()
    sink = open_sink(cfg.train.log, out, state.step if run.resume else None) if dist.main else None
    try:
        with open(metrics, "a" if run.resume else "w") as log:

            def emit(record: dict) -> None:
                log.write(json.dumps(record) + "\n")
                log.flush()
                state.records += 1
                if sink is not None:
                    sink.write(record)

            if not dist.active and stop.requested:  # a signal while the run loaded
                _save_and_stop(run, clock, stop)
            while state.step < total and not _patience_spent(cfg, state):
                _record(run, _step(run, step_fn, options), emit, bar)
                if validation is not None and validation.due(state.step):
                    validation.validate(emit)
                    clock.tick(state)
                    run.folder.save_checkpoint(learner, run.optimizer, state, cfg)
                    validation.after_checkpoint()
                if dist.stopping if dist.active else asked(state.step):
                    _save_and_stop(run, clock, stop)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return {
        "run": str(out),
        "steps": state.step,
        "stopped_early": _patience_spent(cfg, state),
        "best_step": state.best_step,
        f"best_val_{run.source.metric}": state.best if not math.isnan(state.best) else None,
        "seconds": time.perf_counter() - started,
    }


def _step_options(run: _Run) -> dict:
    """The keyword arguments of ``step_fn``: only what is set, so a step_fn written for plain
    ``outer_step`` (positional arguments) still runs."""
    options: dict = {"dist": run.dist} if run.dist.active else {}
    train = run.cfg.train
    return options | {k: getattr(train, k) for k in ("sam_rho", "grad_clamp") if getattr(train, k)}


def _record(run: _Run, result: StepResult, emit: Callable[[dict], None], bar: Progress) -> None:
    """Count the step that gave ``result``: its gradient analysis, its losses in the log
    window, a log record every ``train.log_every`` steps (and at the last), the bar."""
    state, cfg = run.state, run.cfg
    if result.analysis is not None:
        emit({"step": state.step, "gradients": result.analysis})
    state.step += 1
    state.window[0] += result.meta
    state.window[1] += result.co or 0.0
    state.window[2] += 1
    bar.set_loss(state.window[0] / state.window[2])  # the latest: this window's mean
    if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
        emit(_log_record(run))
        state.window = [0.0, 0.0, 0]
    bar.update(1)


def _say_if_finished(run: _Run) -> None:
    """A resumed run with nothing left to train says so, and how to train on."""
    cfg, state, out = run.cfg, run.state, run.out
    if _patience_spent(cfg, state):
        print(
            f"cmlearn: {out} stopped early at step {state.step} (train.patience="
            f"{cfg.train.patience} validations without improvement); it stays stopped",
            file=sys.stderr,
        )
    elif state.step >= cfg.train.steps:
        print(
            f"cmlearn: {out} is finished ({state.step} of {cfg.train.steps} steps); to train "
            f"on, resume with more steps: cmlearn train --out {out} --resume --steps "
            f"{2 * max(state.step, 1)}",
            file=sys.stderr,
        )


def _step(run: _Run, step_fn: Callable[..., StepResult], options: dict) -> StepResult:
    """One meta-update on meta-batch ``state.step`` (its own stream: resumes exactly)."""
    cfg, step = run.cfg, run.state.step
    batch = run.source.sample(cfg.task.meta_batch, generator("train", cfg.train.seed, step))
    analyse = bool(cfg.train.analysis_every) and step % cfg.train.analysis_every == 0
    if cfg.train.lr_schedule != "constant":
        set_lr(run.optimizer, cfg, step)
    try:
        return step_fn(
            run.learner,
            run.optimizer,
            batch,
            Stage.at(step, cfg.train.steps, cfg.train.epoch_steps),
            cfg.train.task_chunk,
            analyse,
            **options,
        )
    except FloatingPointError as err:
        kept = _kept(run.state, run.out) if run.dist.main else "(rank 0 says what is kept)"
        raise CmlearnError(f"loss became {err.args[0]} at step {step}; stopped. {kept}") from None


def _log_record(run: _Run) -> dict:
    """The training log record of the window of steps since the last one."""
    state, cfg = run.state, run.cfg
    n = state.window[2]
    record = {"step": state.step, "train_loss": state.window[0] / n}
    if run.learner.co.active:
        record["train_co_loss"] = state.window[1] / n
    if cfg.train.lr_schedule != "constant":
        record["meta_lr"] = run.optimizer.param_groups[0]["lr"]
    return record


class _Validation:
    """Rank 0's validation: fixed tasks (or TLP's fresh ones), the best model, the top-k
    checkpoints, early stopping's count."""

    def __init__(self, run: _Run) -> None:
        cfg, source = run.cfg, run.source
        self.run = run
        self.bar: Progress | None = None
        self.top = None
        if cfg.eval.ensemble:
            lower = lower_is_better(source.metric)
            self.top = TopCheckpoints(run.out, cfg.eval.ensemble, lower, run.state.step)
        self.tlp = cfg.eval.protocol == "tlp"
        self.val = (
            None
            if self.tlp
            else fixed_tasks(source, cfg.train.val_tasks, cfg.eval.seed, "val", keep=True)
        )
        self.better = (
            (lambda a, b: a < b) if lower_is_better(source.metric) else (lambda a, b: a > b)
        )

    def due(self, step: int) -> bool:
        cfg = self.run.cfg
        return step % cfg.train.val_every == 0 or step == cfg.train.steps

    def measure(self, step: int) -> float:
        """The validation metric of the current model at ``step``."""
        run, cfg = self.run, self.run.cfg
        tasks = self.val if not self.tlp else tlp_tasks(run.source, cfg, "val", step)
        return float(scores(run.learner, tasks, EvalSpec.of(cfg, run.source.metric)).mean())

    def validate(self, emit: Callable[[dict], None]) -> None:
        """Validate, log it, save a new best model (and TLP's test) and a top-k member."""
        run, state, cfg = self.run, self.run.state, self.run.cfg
        metric = run.source.metric
        value = self.measure(state.step)
        if not math.isfinite(value):
            raise CmlearnError(
                f"validation {metric} became {value} at step {state.step}; "
                f"stopped. {_kept(state, run.out)}"
            )
        record = {"step": state.step, f"val_{metric}": value}
        learned = {k: v.mean().item() for k, v in run.learner.step_sizes.items() if v.requires_grad}
        emit(record | ({"step_sizes": learned} if learned else {}))
        if state.best_step < 0 or self.better(value, state.best):
            state.best, state.best_step, state.stale = value, state.step, 0
            run.folder.save_best(run.learner, cfg, state.step)
            if self.tlp:  # TLP tests at every new best; the last test is the score
                run.folder.save_tlp_test(tlp_test(run.learner, run.source, cfg, state.step))
            if self.bar is not None:
                self.bar.new_best(f"val_{metric}", value, state.step)
        else:
            state.stale += 1
        if self.top is not None:
            self.top.offer(run.learner, cfg, state.step, value, metric)

    def after_checkpoint(self) -> None:
        if self.top is not None:  # after the checkpoint: see TopCheckpoints
            self.top.prune()


def _save_and_stop(run: _Run, clock: _Clock, stop: _StopFlag) -> None:
    """Save the checkpoint (rank 0) and raise ``Interrupted`` saying how to resume."""
    if run.dist.main:
        clock.tick(run.state)
        run.folder.save_checkpoint(run.learner, run.optimizer, run.state, run.cfg)
    raise Interrupted(
        f"{stop.reason or 'interrupted'} at step {run.state.step}; saved; resume "
        f"with: cmlearn train --out {run.out} --resume"
    )


def tlp_tasks(source, cfg: Config, split: str, step: int) -> list[TaskBatch]:
    """TLP-FSNC's fresh tasks at validation ``step`` (``val``: ``train.val_tasks`` of them;
    ``test``: ``eval.tasks``), from the stream ``(split, train.seed, step)``: fresh at every
    validation as in TLP, but a base run and its +CML run draw the same ones at the same step
    (TLP's shared global generator makes them diverge)."""
    n = cfg.train.val_tasks if split == "val" else cfg.eval.tasks
    gen = generator(split, cfg.train.seed, step)
    size = cfg.eval.batch or CHUNK
    return [source.sample(min(size, n - i), gen, split) for i in range(0, n, size)]


def tlp_test(learner: Learner, source, cfg: Config, step: int) -> dict:
    """Per-task test scores of the current model on fresh tasks (TLP's test at a new best)."""
    tasks = tlp_tasks(source, cfg, "test", step)
    values = scores(learner, tasks, EvalSpec.of(cfg, source.metric))
    return {"step": step, "metric": source.metric, "values": [float(v) for v in values]}


def _schedules(cfg: Config) -> dict[str, list[str]]:
    """``cfg``'s schedules by what they read: the run's length (``--steps``: the fraction
    done) or the epoch length (``train.epoch_steps``)."""
    cosine = ["cosine meta-lr"] if cfg.train.lr_schedule == "cosine" else []
    return {
        "--steps": cosine + (["derivative order"] if cfg.inner.follows_fraction else []),
        "train.epoch_steps": cosine + (["multi-step loss"] if cfg.inner.follows_epochs else []),
    }


def _check_resume(saved: Config, cfg: Config) -> None:
    """Refuse a resume that would rewrite the past of a schedule, or grow a top-k ensemble
    back (pruned checkpoints are gone)."""
    before, after = _schedules(saved), _schedules(cfg)
    values = {
        "--steps": (saved.train.steps, cfg.train.steps),
        "train.epoch_steps": (saved.train.epoch_steps, cfg.train.epoch_steps),
    }
    for key, (old, new) in values.items():
        names = sorted(set(before[key] + after[key]))
        if names and old != new:
            raise CmlearnError(
                f"this run's schedules ({', '.join(names)}) follow {key}, so a resumed run "
                f"keeps {key} {old}; start a new run for another setting"
            )
    if cfg.eval.ensemble > saved.eval.ensemble:
        raise CmlearnError(
            f"this run kept its {saved.eval.ensemble} best validation checkpoints; a resumed "
            f"run cannot keep more (eval.ensemble={cfg.eval.ensemble})"
        )


class TopCheckpoints:
    """The ``k`` best validation checkpoints of a run (``eval.ensemble``, MAML++'s test
    ensemble, ``top_n_models``) as ``top-<step>.pt`` files in the run folder, each written
    atomically with its step and validation value, ranked as the best model is (a strictly
    better value wins; ties keep the earlier step, so the first is ``model.pt``).

    The files are the state: nothing goes into the checkpoint. A new file is written before
    the checkpoint and files that fell out are deleted only after it (``prune``), so whatever
    step a run stops at, the files up to its checkpoint's step still hold that step's top k;
    on resume the files from later steps (written before a checkpoint that never came) are
    deleted and the rest ranked again.
    """

    def __init__(self, folder: Path, k: int, lower: bool, step: int) -> None:
        self.folder, self.k, self.lower = Path(folder), k, lower
        self.members: list[tuple[tuple[float, int], Path]] = []
        for path in ensemble_paths(self.folder):
            saved = read_member(path)
            if saved["step"] > step:
                path.unlink(missing_ok=True)
            else:
                self.members.append((member_key(saved, lower), path))
        self.members.sort()
        self.prune()

    def offer(self, learner: Learner, cfg: Config, step: int, value: float, metric: str) -> None:
        """Save this validation's model if it is among the ``k`` best so far."""
        state = member_state(learner, cfg, step, value, metric)
        key = member_key(state, self.lower)
        if len(self.members) >= self.k and key >= self.members[self.k - 1][0]:
            return
        path = self.folder / f"top-{step}.pt"
        atomic_save(state, path)
        self.members = sorted([*self.members, (key, path)])

    def prune(self) -> None:
        """Delete the files beyond the ``k`` best."""
        for _, path in self.members[self.k :]:
            path.unlink(missing_ok=True)
        self.members = self.members[: self.k]


class _Clock:
    """Adds the wall time since the last tick to ``state.seconds`` (training and validation,
    summed over resumes, so a run's cost is known however often it was stopped)."""

    def __init__(self) -> None:
        self.mark = time.perf_counter()

    def tick(self, state: RunState) -> None:
        now = time.perf_counter()
        state.seconds += now - self.mark
        self.mark = now


def _patience_spent(cfg: Config, state: RunState) -> bool:
    """Early stopping: ``train.patience`` validations in a row without a strict improvement
    (TLP-FSNC's rule). Kept in the checkpoint, so a resumed run that had stopped stays stopped."""
    return 0 < cfg.train.patience <= state.stale


def _kept(state: RunState, out: Path) -> str:
    if state.best_step < 0:
        return f"No checkpoint had been written yet; {out} holds no model."
    return f"The best model (step {state.best_step}) and the last checkpoint are kept in {out}."


class _StopFlag:
    """Ctrl-C or SIGTERM (what schedulers send) asks the loop to save and stop after the
    current step. A second signal aborts at once, unless a file is being written: that write
    finishes first, so an abort never leaves a half-written file."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if not self.requested:
            self.requested = True
            self.reason = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
            return
        if writing():
            print("cmlearn: saving; stopping as soon as the file is written", file=sys.stderr)
            return
        raise KeyboardInterrupt

    def __enter__(self) -> _StopFlag:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
