"""Seeded test tasks → per-task scores (summarised and paired by ``cmlearn.app.stats``).

A run trained with ``eval.ensemble=k`` is tested as MAML++'s code tests (``top_n_models``):
each of its k best validation checkpoints adapts to every test task, and the mean of their
outputs (the logits, for classification) is scored.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import scipy
import torch
from torch import Tensor

from cmlearn.app.files import atomic_write
from cmlearn.app.progress import advance
from cmlearn.app.runs import inference_state, learner_device, read_state
from cmlearn.app.stats import finite
from cmlearn.core.engine import Learner, task_accuracy, task_losses
from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks import TaskBatch, TaskSource
from cmlearn.core.tasks.batch import generator

if TYPE_CHECKING:
    from cmlearn.app.config import Config

CHUNK = 500  # tasks drawn per generator; fixed, so the tasks depend only on the seed
TOP = "top-*.pt"  # the top-k validation checkpoints of a run (``eval.ensemble``)
SCORES = "scores"  # a run folder's cache of per-task test scores (``run_scores``)
TEST_SCORES = "test_scores.json"  # a run folder's plain record of its test scores


@dataclass(frozen=True)
class EvalSpec:
    """How tasks are scored, shared by ``scores``, ``run_scores`` and ``ensemble_scores``:
    the per-task ``metric`` (``accuracy``, or a loss such as ``mse``), the evaluation ``mode``,
    the inner ``steps`` (0 = the training rule's) and the tasks scored at a time
    (``batch_size``, 0 = a chunk at a time)."""

    metric: str
    mode: str = "cml"
    steps: int = 0
    batch_size: int = 0

    @classmethod
    def of(cls, cfg: Config, metric: str, mode: str = "cml", steps: int = 0) -> EvalSpec:
        """A run's spec: its test-time inner steps (unless ``steps``) and evaluation batch."""
        return cls(metric, mode, steps or cfg.eval_steps, cfg.eval.batch or CHUNK)


def lower_is_better(metric: str) -> bool:
    return metric != "accuracy"


def fixed_tasks(
    source: TaskSource, n_tasks: int, seed: int, split: str, keep: bool = False
) -> list[_Chunk]:
    """``n_tasks`` tasks of ``split`` (``val`` or ``test``) in chunks of at most ``CHUNK``.

    Chunk ``i`` depends only on ``(split, seed, i)`` (its own random stream), so every
    method, run seed and training length sees the same tasks, validation and test tasks
    never coincide, and the first N tasks of a larger evaluation are those of a smaller one.
    Chunks are drawn lazily, one at a time, so a large test never sits in memory at once;
    ``keep`` holds them once drawn (validation, scored many times) instead.
    """
    return [
        _Chunk(source, seed, split, i, min(CHUNK, n_tasks - start), keep)
        for i, start in enumerate(range(0, n_tasks, CHUNK))
    ]


class _Chunk:
    """A chunk of fixed tasks, sampled when used (and kept if asked)."""

    def __init__(
        self, source: TaskSource, seed: int, split: str, index: int, size: int, keep: bool
    ) -> None:
        self.source, self.seed, self.split, self.index, self.size = source, seed, split, index, size
        self.keep = keep
        self._batch: TaskBatch | None = None
        self._digest: bytes | None = None

    def digest(self) -> bytes:
        """``task_digest`` of the chunk's tasks, computed once (every run a ``compare``
        scores on these tasks keys its cache with it)."""
        if self._digest is None:
            self._digest = task_digest(self.get())
        return self._digest

    def get(self) -> TaskBatch:
        if self._batch is not None:
            return self._batch
        gen = generator(self.split, self.seed, self.index)
        batch = self.source.sample(CHUNK, gen, self.split)
        if self.size < CHUNK:  # own copies: a slice would keep all CHUNK tasks alive
            batch = batch[: self.size].clone()
        if self.keep:
            self._batch = batch
        return batch


def batches(chunks: list, size: int = 0) -> list[TaskBatch]:
    """The task batches of ``chunks`` (fixed tasks or plain batches), split into ``size``."""
    out = []
    for chunk in chunks:
        batch = chunk.get() if isinstance(chunk, _Chunk) else chunk
        step = size or batch.n_tasks
        out.extend(batch[i : i + step] for i in range(0, batch.n_tasks, step))
    return out


def scores(learner: Learner, chunks: list, spec: EvalSpec) -> np.ndarray:
    """Per-task ``spec.metric`` (``mse``: query loss; ``accuracy``) after adaptation with
    ``spec.steps`` inner steps (0 = the training rule's); ``spec.batch_size`` tasks at a time."""
    key = "accuracy" if spec.metric == "accuracy" else "loss"
    steps = spec.steps or None
    return _per_task(
        learner, chunks, spec.batch_size, lambda b: learner.evaluate(b, spec.mode, steps)[key]
    )


def _per_task(
    learner: Learner, chunks: list, batch_size: int, score: Callable[[TaskBatch], Tensor]
) -> np.ndarray:
    """``score`` of every task of ``chunks``, ``batch_size`` tasks at a time, in eval mode."""
    was_training = learner.net.training
    learner.net.eval()
    try:
        out = []
        for chunk in chunks:
            for b in batches([chunk], batch_size):
                out.append(score(b).detach().cpu())
                advance(b.n_tasks)  # cmlearn eval's progress bar, if one is open
    finally:
        learner.net.train(was_training)
    return torch.cat(out).double().numpy()


def run_scores(
    run: Path, cfg: Config, learner: Learner, chunks: list, spec: EvalSpec
) -> np.ndarray:
    """A trained run's per-task test scores: the best checkpoint's (``learner``, as
    ``load_run`` gives it), or with ``eval.ensemble`` the ensemble of its best checkpoints.
    Kept in ``RUN/scores/``, so that scoring a finished run again (every ``compare`` that
    reuses it) takes no time, and recorded in ``RUN/test_scores.json`` (``record_scores``).

    The key is a SHA-256 of what the scores depend on: the configuration and ``spec``,
    the parameters actually scored (the loaded learner's tensors, or the ensemble members once
    read, never the files, which a running training may replace meanwhile), the test tasks'
    own tensors and the graph of node tasks (so changed data or a changed sampler misses), the
    device, the thread count, the torch / numpy / scipy versions and the source of the code
    that computes a score (``code_digest``). Each entry is stored with the SHA-256 of its
    bytes beside it (``KEY.sha256``); an entry that does not match it (damaged, truncated,
    half written) is scored again and replaced, never used.
    """
    members = None
    if cfg.eval.ensemble:
        members = ensemble_members(run, cfg.eval.ensemble, lower_is_better(spec.metric), learner)
    key = _score_key(cfg, chunks, spec, learner, members)
    path = Path(run) / SCORES / f"{key}.npy"
    values = _read_entry(path, sum(_size(c) for c in chunks))
    if values is None:
        if members is None:
            values = scores(learner, chunks, spec)
        else:
            values = ensemble_scores(learner, members, chunks, spec)
        _write_entry(path, values)
    record_scores(run, chunks, spec, cfg.eval.ensemble, key, values)
    return values


def _read_entry(path: Path, n_tasks: int) -> np.ndarray | None:
    """The cached scores at ``path`` if its bytes match the SHA-256 written beside them."""
    try:
        data = path.read_bytes()
        if path.with_suffix(".sha256").read_text().strip() != hashlib.sha256(data).hexdigest():
            return None
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:  # absent or unreadable (numpy raises many types): score again
        return None
    if isinstance(values, np.ndarray) and values.dtype == np.float64 and values.shape == (n_tasks,):
        return values
    return None


def _write_entry(path: Path, values: np.ndarray) -> None:
    """Write the scores, then their SHA-256 (a crash between the two leaves an entry that
    fails the check, so it is scored again)."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    data = buffer.getvalue()
    try:
        atomic_write(path, lambda f: f.write(data))
        line = hashlib.sha256(data).hexdigest() + "\n"
        atomic_write(path.with_suffix(".sha256"), lambda f: f.write(line.encode()))
    except (CmlearnError, OSError):  # a read-only run folder: the scores are still right
        pass


def record_scores(
    run: Path, chunks: list, spec: EvalSpec, ensemble: int, key: str, values: np.ndarray
) -> None:
    """Keep ``values`` in ``RUN/test_scores.json``: a small plain file (one entry per metric,
    mode, inner steps, ensemble and test tasks, the latest scoring of each) that outlives the
    cache, reads without cmlearn, and can be committed beside a result. ``tasks`` is
    ``tasks_digest`` of the test tasks, ``key`` the cache key; a non-finite score is ``null``."""
    path = Path(run) / TEST_SCORES
    seeds = {c.seed for c in chunks if isinstance(c, _Chunk)}
    entry = {
        "metric": spec.metric,
        "mode": spec.mode,
        "steps": spec.steps,
        "ensemble": ensemble,
        "n_tasks": len(values),
        "eval_seed": seeds.pop() if len(seeds) == 1 else None,
        "tasks": tasks_digest(chunks),
        "key": key,
        "values": finite([float(v) for v in values]),
    }
    fields = ("metric", "mode", "steps", "ensemble", "tasks")
    try:
        entries = json.loads(path.read_text())["scores"]
        entries = [e for e in entries if isinstance(e, dict)]
    except Exception:  # absent, or not ours: start the record again
        entries = []
    if entry in entries:
        return
    same = [e for e in entries if all(e.get(f) == entry[f] for f in fields)]
    entries = [e for e in entries if e not in same] + [entry]
    text = json.dumps({"scores": entries}, allow_nan=False, separators=(",", ":"))
    try:
        atomic_write(path, lambda f: f.write(text.encode() + b"\n"))
    except (CmlearnError, OSError):  # a read-only run folder
        pass


def tasks_digest(chunks: list) -> str:
    """SHA-256 (hex) of all the tasks of ``chunks`` in order: equal digests, the same tasks."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.digest() if isinstance(chunk, _Chunk) else task_digest(chunk))
    return digest.hexdigest()


def _size(chunk: object) -> int:
    return chunk.size if isinstance(chunk, _Chunk) else chunk.n_tasks


def _score_key(
    cfg: Config, chunks: list, spec: EvalSpec, learner: Learner, members: list[dict] | None
) -> str:
    device = learner_device(learner)
    settings = {
        "config": cfg.to_dict(),
        "metric": spec.metric,
        "mode": spec.mode,
        "steps": spec.steps,
        "batch": spec.batch_size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "versions": [torch.__version__, np.__version__, scipy.__version__],
        "code": code_digest(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    states = [learner.net.state_dict(), learner.step_sizes, *(members or [])]
    for state in states:
        for name in sorted(state):
            if isinstance(state[name], Tensor):
                digest.update(name.encode())
                _update(digest, state[name])
            else:
                digest.update(f"{name}={state[name]!r}".encode())
    graphs = {id(g): g for c in chunks if (g := getattr(getattr(c, "source", None), "graph", None))}
    for graph in graphs.values():  # node tasks hold indices: the data is the graph itself
        for t in (graph.features.coalesce(), graph.adjacency.coalesce()):
            _update(digest, t.indices(), t.values())
        _update(digest, graph.labels)
    digest.update(tasks_digest(chunks).encode())
    return digest.hexdigest()[:32]


def task_digest(batch: TaskBatch) -> bytes:
    """SHA-256 of a batch's task tensors."""
    digest = hashlib.sha256()
    _update(digest, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    return digest.digest()


def _update(digest: hashlib._Hash, *tensors: Tensor) -> None:
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        flat = t.detach().cpu().contiguous().reshape(-1)  # 0-d and bool tensors too
        digest.update(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")


def scoring_modules() -> list[ModuleType]:
    """The code a score can depend on: the whole core (tasks and their samplers, models,
    algorithms, the co-learner modes, the engine), the builder that turns a configuration
    into a learner, the configuration itself and this module. Not the benchmarks, the CLI,
    plots, analysis or training (what they change reaches a score only through the saved
    parameters, which the key hashes)."""
    from cmlearn import core
    from cmlearn.app import build, config

    return [core, build, config, sys.modules[__name__]]


def scoring_files() -> list[Path]:
    """The Python files of ``scoring_modules`` (a package: every file under it), sorted."""
    files = set()
    for module in scoring_modules():
        path = Path(module.__file__)
        files.update(path.parent.rglob("*.py") if hasattr(module, "__path__") else [path])
    return sorted(files)


@functools.cache
def code_digest() -> str:
    """SHA-256 of the source of ``scoring_files``: a change there changes the cache key,
    while editing a benchmark or the CLI keeps every cached score."""
    digest = hashlib.sha256()
    root = Path(sys.modules["cmlearn"].__file__).parent
    for path in scoring_files():
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensemble_scores(
    learner: Learner, members: list[dict], chunks: list, spec: EvalSpec
) -> np.ndarray:
    """Per-task ``spec.metric`` of the mean output of ``members`` (saved states, ``member_state``):
    each adapts to the task on its own, as in ``scores``, and their query outputs are
    averaged before the argmax (accuracy) or the loss. ``learner`` is the model they are
    loaded into, one after the other; its own state is restored after."""

    def score(batch: TaskBatch) -> Tensor:
        total = None
        for member in members:
            load_member(learner, member)
            result = learner.evaluate(batch, spec.mode, spec.steps or None, return_outputs=True)
            total = result["output"] if total is None else total + result["output"]
        mean = total / len(members)
        if spec.metric == "accuracy":
            return task_accuracy(mean, batch.query_y)
        return task_losses(mean, batch.query_y, learner.loss)

    own = _snapshot(learner)
    try:
        return _per_task(learner, chunks, spec.batch_size, score)
    finally:
        load_member(learner, own)


def member_state(learner: Learner, cfg: Config, step: int, value: float, metric: str) -> dict:
    """A top-k checkpoint: the inference model (as ``model.pt``), the co-learner (so the
    CML† modes can be ensembled too), and the validation ``value`` that ranks it."""
    co = learner.net.colearner
    return inference_state(learner, cfg, step) | {
        "value": value,
        "metric": metric,
        "colearner": None if co is None else co.state_dict(),
    }


def _snapshot(learner: Learner) -> dict:
    """Copies of everything ``load_member`` sets, to put the learner back after an ensemble."""
    co = learner.net.colearner
    return {
        "model": {k: v.clone() for k, v in learner.net.model.state_dict().items()},
        "step_sizes": {k: v.detach().clone() for k, v in learner.step_sizes.items()},
        "colearner": None if co is None else {k: v.clone() for k, v in co.state_dict().items()},
    }


def load_member(learner: Learner, state: dict) -> None:
    learner.net.model.load_state_dict(state["model"])
    for k, v in state["step_sizes"].items():
        learner.step_sizes[k].data.copy_(v)
    if state.get("colearner") is not None and learner.net.colearner is not None:
        learner.net.colearner.load_state_dict(state["colearner"])


def member_key(state: dict, lower: bool) -> tuple[float, int]:
    """Sort key of a top-k checkpoint, best first: its value, then the earlier step."""
    return (state["value"] if lower else -state["value"], state["step"])


def ensemble_paths(run: Path) -> list[Path]:
    return sorted(Path(run).glob(TOP))


def read_member(path: Path, device: torch.device | None = None) -> dict:
    state = read_state(path, device)
    missing = [k for k in ("step", "value", "model", "step_sizes") if k not in state]
    if missing:
        raise CmlearnError(f"{path} is not a top-k checkpoint (missing {', '.join(missing)})")
    return state


def ensemble_members(run: Path, k: int, lower: bool, learner: Learner) -> list[dict]:
    """The ``k`` best validation checkpoints saved in ``run``, best first (all of them when
    the run validated fewer than ``k`` times)."""
    states = [read_member(p, learner_device(learner)) for p in ensemble_paths(run)]
    if not states:
        raise CmlearnError(
            f"{run} holds no top-k checkpoints ({TOP}): it was not trained with eval.ensemble"
        )
    return sorted(states, key=lambda state: member_key(state, lower))[:k]
