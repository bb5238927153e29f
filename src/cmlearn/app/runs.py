"""The run folder: configuration, metrics log, checkpoints, the inference model, resume.

A run folder holds::

    config.json      the resolved configuration
    metrics.jsonl    one JSON object per log / validation / analysis event
    checkpoint.pt    everything needed to resume (model, co-learner, step sizes, Adam, step)
    model.pt         the best-validation inference model: ψ, θ and step sizes, no co-learner
    colearner.pt     the co-learner ϕ from the same step as model.pt (for CML† evaluation)
    .lock            held (``flock``) by the process training into the folder

Every file is written to a temporary name and renamed (``cmlearn.app.files``).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmlearn.app.build import build_learner, build_source
from cmlearn.app.config import Config
from cmlearn.app.files import atomic_save, atomic_text, damage, remove_stale_temporaries
from cmlearn.app.logs import METRICS
from cmlearn.app.runtime import Runtime
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks import TaskSource

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

CONFIG, CHECKPOINT, MODEL, COLEARNER = (
    "config.json",
    "checkpoint.pt",
    "model.pt",
    "colearner.pt",
)
LOCK = ".lock"
COMPARE_MARK = ".cmlearn-compare"  # written first into a compare folder (see claim_compare)
# Keys a resume may change (--steps, --log): every other key of config.json must equal the
# configuration the checkpoint (or the saved model) was written with.
RESUMABLE_KEYS = ("train.steps", "train.log")
TLP_TEST = "tlp_test.json"  # eval.protocol=tlp: the test scores at the best validation

# What each saved file must hold (a valid tensor file of another shape is refused by name).
KEYS = {
    CHECKPOINT: ("config", "state", "net", "step_sizes", "optimizer", "torch_rng"),
    MODEL: ("config", "step", "model", "step_sizes"),
    COLEARNER: ("step", "colearner"),
}


@dataclass
class RunState:
    step: int = 0
    best: float = math.nan
    best_step: int = -1
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # sums, count
    records: int = -1  # lines in metrics.jsonl when the checkpoint was written (-1: unknown)
    stale: int = 0  # validations since the best one (early stopping)
    seconds: float = 0.0  # wall time spent training, up to the checkpoint, over all resumes


class RunFolder:
    """One run's files. Loading anything damaged is a one-line ``CmlearnError``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder exclusively while training into it. The kernel releases a
        ``flock`` when its process dies, so a killed run never leaves the folder locked;
        temporary files a killed writer left behind are removed once the lock is held."""
        existed = self.path.exists()
        fd, created = open_lock(self.path)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CmlearnError(
                        f"{self.path} is in use by another cmlearn process (pid {_owner(fd)}); "
                        "wait for it to finish or choose another --out"
                    ) from None
            pid = f"{os.getpid()}\n".encode()
            try:  # the pid first, then the length: a reader never sees an empty file
                os.pwrite(fd, pid, 0)
                os.ftruncate(fd, len(pid))
            except OSError as err:  # a full disk at start: nothing of ours is left behind
                if created:
                    (self.path / LOCK).unlink(missing_ok=True)
                    if not existed:
                        _remove_if_empty(self.path)
                raise CmlearnError(
                    f"cannot use {self.path} as a run folder: {err.strerror or err}"
                ) from None
            remove_stale_temporaries(self.path)
            yield
        finally:
            os.close(fd)  # releases the lock

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def claim(self, resume: bool = False) -> None:
        """Refuse an ``--out`` that is not this kind of folder: a compare folder, or a
        non-empty folder that holds no run (what a run writes would mix with what is there).
        A folder holding only a lock and temporaries (a run killed before its
        ``config.json`` was written) is a run's and may be started again."""
        kind = folder_kind(self.path)
        if resume and kind in ("absent", "empty"):
            raise CmlearnError(f"no checkpoint to resume in {self.path}: the folder is {kind}")
        if kind == "compare":
            raise CmlearnError(
                f"{self.path} is a compare folder; train into one of its run folders or "
                "choose another --out"
            )
        if kind == "foreign":
            raise CmlearnError(
                f"{self.path} is not empty and holds no cmlearn run; choose an empty or new --out"
            )

    def unstart(self, existed: bool) -> None:
        """Undo a start refused before its first checkpoint: its ``config.json`` and lock go,
        and the folder too where this start created it, so the same command can run again."""
        for name in (CONFIG, LOCK):
            (self.path / name).unlink(missing_ok=True)
        if not existed:
            _remove_if_empty(self.path)

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

    def load_checkpoint(self, learner: Learner, optimizer, cfg: Config) -> RunState:
        """Restore the checkpoint into ``learner`` and ``optimizer``; ``cfg`` (the folder's
        configuration with this resume's ``--steps``/``--log``) must be the one it was
        written with."""
        path = self.path / CHECKPOINT
        ckpt = read_state(path, learner_device(learner))
        check_same_config(path, ckpt["config"], cfg)
        for other in (self.path / MODEL, self.path / COLEARNER):  # kept as the best so far:
            problem = damage(other) if other.exists() else None  # found now, not at eval
            if problem is not None:
                raise CmlearnError(f"corrupt checkpoint file {other}: {problem}")
        try:
            learner.net.load_state_dict(ckpt["net"])
            for k, v in ckpt["step_sizes"].items():
                learner.step_sizes[k].data.copy_(v)
            optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            state = RunState(**ckpt["state"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CmlearnError(f"cannot resume from {path}: {load_error(err)}") from None
        return state

    def save_best(self, learner: Learner, cfg: Config, step: int) -> None:
        atomic_save(inference_state(learner, cfg, step), self.path / MODEL)
        if learner.net.colearner is not None:
            atomic_save(
                {"step": step, "colearner": learner.net.colearner.state_dict()},
                self.path / COLEARNER,
            )

    def train_seconds(self) -> float | None:
        """Wall seconds the run spent training (None for checkpoints older than the count)."""
        state = read_state(self.path / CHECKPOINT, torch.device("cpu")).get("state", {})
        return state.get("seconds")

    def save_tlp_test(self, record: dict) -> None:
        atomic_text(json.dumps(record), self.path / TLP_TEST)

    def read_tlp_test(self) -> dict:
        """The per-task test scores TLP's protocol stored at the best validation."""
        path = self.path / TLP_TEST
        try:
            record = json.loads(path.read_text())
            values = [float(v) for v in record["values"]]
        except FileNotFoundError:
            raise CmlearnError(
                f"{path} is missing: the run was not trained with eval.protocol=tlp"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CmlearnError(f"cannot read {path}: {err}") from None
        return record | {"values": values}

    def truncate_metrics(self, state: RunState) -> str | None:
        """Keep exactly what the checkpoint at ``state.step`` had logged, so a resumed log has
        no duplicates and no gaps. Gradient-analysis records are written before their step's
        update, so the one for ``state.step`` is written again after resuming. A torn last
        line (a process killed mid-write) is dropped and reported (the returned note); any
        other damage, or fewer records than the checkpoint had written, is refused."""
        path = self.path / METRICS
        try:
            lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
        except OSError as err:
            raise CmlearnError(f"cannot read {path}: {err.strerror or err}") from None
        note = None
        if lines[-1]:  # no final newline: the last write was cut
            lines[-1] = b""
            note = f"dropped a torn last line of {path}"
        keep = []
        for number, raw in enumerate(lines[:-1], 1):
            try:
                record = json.loads(raw.decode())
                record_step = int(record["step"])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise CmlearnError(
                    f"{path} is damaged at line {number}; cannot resume without corrupting "
                    f"the run's history (restore the file or start a new run)"
                ) from None
            if record_step < state.step or (
                record_step == state.step and "gradients" not in record
            ):
                keep.append(raw.decode())
        if state.records >= 0 and len(keep) != state.records:
            raise CmlearnError(
                f"{path} holds {len(keep)} records up to step {state.step} but the checkpoint "
                f"had written {state.records}: the file was truncated or edited"
            )
        atomic_text("".join(line + "\n" for line in keep), path)
        state.records = len(keep)
        return note


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


def open_lock(folder: Path) -> tuple[int, bool]:
    """Open (creating) ``folder/.lock`` for writing, never through a symbolic link and only
    as a regular file: a lock planted as a link to another file must not truncate that file.
    Returns the descriptor and whether this call created the file."""
    path = Path(folder) / LOCK
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o666)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | nofollow | getattr(os, "O_NONBLOCK", 0))
            created = False
    except OSError as err:
        if path.is_symlink():
            raise CmlearnError(
                f"refusing {path}: it is a symbolic link, not a lock file cmlearn wrote (remove it)"
            ) from None
        raise CmlearnError(f"cannot use {folder} as a run folder: {err.strerror or err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CmlearnError(f"refusing {path}: it is not a regular file (remove it)")
    return fd, created


def _owner(fd: int) -> str:
    """The pid written in a held lock (the holder writes it just after locking: a reader
    that comes in between waits a moment for it)."""
    for _ in range(20):
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip().split("\n")[0]
        if owner:
            return owner
        time.sleep(0.05)
    return "unknown"


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or not ours to remove): left as it is


def folder_kind(path: Path) -> str:
    """``absent``, ``empty``, ``run``, ``compare`` or ``foreign`` (a file, or a folder that
    cannot be read, is a ``CmlearnError``). A run folder has a
    ``config.json`` or a checkpoint, or only a lock and temporaries (a run killed before
    its configuration was written); a compare folder has the mark ``compare`` writes first
    (or, written by older versions, a ``compare.json``)."""
    path = Path(path)
    if not path.exists():
        return "absent"
    if not path.is_dir():
        raise CmlearnError(f"{path} is a file, not a folder")
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as err:
        raise CmlearnError(f"cannot read {path}: {err.strerror or err}") from None
    if COMPARE_MARK in names or "compare.json" in names:
        return "compare"
    if CONFIG in names or CHECKPOINT in names:
        return "run"
    if not names:
        return "empty"
    if all(n == LOCK or (n.startswith(".") and n.endswith(".tmp")) for n in names):
        return "run"
    return "foreign"


def stopped_before_config(run: Path) -> str:
    """What to do with a folder whose run was stopped before its ``config.json`` existed
    (the first fraction of a second): nothing was trained, so it is started again."""
    return (
        f"{run} holds no {CONFIG}: its run was stopped before it wrote one, so there is "
        f"nothing to resume; start it again with cmlearn train --preset NAME --out {run}"
    )


def claim_compare(out: Path) -> None:
    """Make ``out`` a compare folder (its mark written first), refusing a run folder and a
    non-empty folder that is neither."""
    kind = folder_kind(out)
    if kind == "run":
        raise CmlearnError(
            f"{out} is a train run folder; compare writes its own runs into a folder of their "
            "own: choose another --out"
        )
    if kind == "foreign":
        raise CmlearnError(
            f"{out} is not empty and holds no cmlearn comparison; choose an empty or new --out"
        )
    if kind != "compare":
        note = "a cmlearn compare folder: one run folder per method and seed\n"
        atomic_text(note, out / COMPARE_MARK)


def config_changes(saved: dict, cfg: Config) -> list[str]:
    """The dotted keys on which ``cfg`` differs from the configuration ``saved`` in a tensor
    file, other than those a resume may change."""
    from cmlearn.app.config import _flatten

    try:
        before = _flatten(Config.from_dict(json.loads(json.dumps(saved))).to_dict())
    except (CmlearnError, TypeError, ValueError) as err:
        return [f"(its configuration does not load: {first_line(err)})"]
    after = _flatten(json.loads(json.dumps(cfg.to_dict())))
    before = json.loads(json.dumps(before))
    keys = sorted(set(before) | set(after))
    return [k for k in keys if k not in RESUMABLE_KEYS and before.get(k) != after.get(k)]


def check_same_config(path: Path, saved: dict, cfg: Config) -> None:
    """Refuse to load ``path`` under another configuration than it was written with (an
    edited ``config.json``), naming the keys that changed."""
    changed = config_changes(saved, cfg)
    if changed:
        raise CmlearnError(
            f"{path} was written with another configuration than {path.parent / CONFIG} "
            f"(changed: {', '.join(changed[:8])}{' …' if len(changed) > 8 else ''}); restore "
            f"{CONFIG} or start a new run"
        )


def learner_device(learner: Learner) -> torch.device:
    return next(learner.net.parameters()).device


def read_config(run: Path) -> Config:
    """The resolved configuration of a run folder; a missing or corrupt one is a clear error."""
    path = Path(run) / CONFIG
    if not path.exists():
        if folder_kind(run) == "run":  # only a lock (and temporaries): killed at its start
            raise CmlearnError(stopped_before_config(run))
        raise CmlearnError(f"{run} is not a run folder (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Config.from_dict(data)
    except (OSError, ValueError, CmlearnError) as err:
        raise CmlearnError(f"corrupt {path}: {first_line(err)}") from None


def read_state(path: Path, device: torch.device | None = None) -> dict:
    """A saved file (tensors only: ``weights_only``, so no code in it ever runs). A missing,
    truncated, unsafe or foreign file is a one-line error saying which."""
    if not path.exists():
        raise CmlearnError(f"missing {path}")
    problem = damage(path)
    if problem is not None:
        raise CmlearnError(f"corrupt checkpoint file {path}: {problem}")
    try:
        data = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch.load raises many types for a damaged file
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            raise CmlearnError(
                f"refusing {path}: it holds pickled Python objects, not only tensors, and "
                "cmlearn never runs code from a file (it was not written by cmlearn)"
            ) from None
        sentence = first_line(err).split(". ")[0].rstrip(".")  # torch's are paragraphs
        raise CmlearnError(f"corrupt checkpoint file {path}: {sentence}") from None
    wanted = KEYS.get(path.name, ())
    missing = [k for k in wanted if not isinstance(data, dict) or k not in data]
    if missing:
        raise CmlearnError(
            f"{path} is not a cmlearn {path.stem} file (missing {', '.join(missing)})"
        )
    return data


def load_run(
    run: Path,
    checkpoint: str = MODEL,
    runtime: Runtime | None = None,
    source: TaskSource | None = None,
) -> tuple[Config, Learner]:
    """Rebuild a trained learner from a run folder: the best model (and co-learner, if any).

    ``source`` is the run's task source when the caller has built it already (it must come
    from the same ``data`` and ``task`` settings): a dataset is then read once, not twice."""
    run = Path(run)
    runtime = runtime or Runtime()
    cfg = read_config(run)
    source = source if source is not None else build_source(cfg, runtime)
    learner = build_learner(cfg, source, runtime.device)
    saved = read_state(run / checkpoint, runtime.device)
    check_same_config(run / checkpoint, saved["config"], cfg)
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
        raise CmlearnError(f"run {run} does not match its config: {load_error(err)}") from None
    return cfg, learner


def load_error(err: BaseException) -> str:
    """One line for a failed ``load_state_dict``: torch's message starts with a header line
    ("Error(s) in loading state_dict for MLP:") and names the keys on the lines below."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        text = f"{lines[0]} {' '.join(lines[1:])}"
        return text if len(text) <= 400 else text[:399] + "…"
    return first_line(err)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
