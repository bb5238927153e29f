"""One rank of the distributed tests (``tests/test_distributed.py``), started by torchrun.

``python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_worker.py
JOBS.json`` runs the jobs of the file in order on every rank, in one process group that this
script joins once (``train`` then uses it). A job is ``{"config": dict, "out": path}`` plus
optional ``"resume"``, ``"stop_at"`` (``should_stop`` says stop at that step), ``"signal"``
(``[rank, step]``: that rank alone sends itself SIGTERM during that step), ``"nan"`` (that
rank's loss becomes NaN; the job's error is printed and the next job runs) and ``"fail"``
(``[rank, step]``: that rank raises at that step).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as tdist

from cmlearn import CmlearnError, Interrupted
from cmlearn.app.cli import exit_process
from cmlearn.app.config import Config
from cmlearn.app.train import outer_step, train
from cmlearn.core.engine import Learner


def step_with(action: str, rank: int, at: int):
    """``outer_step``, except that rank ``rank`` signals itself or raises at step ``at``."""
    calls = {"n": 0}

    def step(learner, *args, **kwargs):
        if tdist.get_rank() == rank and calls["n"] == at:
            if action == "fail":
                raise RuntimeError(f"injected failure on rank {rank} at step {at}")
            if action == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
        calls["n"] += 1
        if action == "nan" and tdist.get_rank() == rank and calls["n"] > at:
            learner = poisoned(learner)
        return outer_step(learner, *args, **kwargs)

    return step


def poisoned(learner: Learner) -> Learner:
    """A shallow copy of ``learner`` whose meta-loss is NaN."""
    copy = dataclasses.replace(learner)
    original = learner.meta_objective

    def meta_objective(batch, progress=0.0):
        loss, terms = original(batch, progress)
        return loss * float("nan"), terms

    copy.meta_objective = meta_objective
    return copy


def main(path: str) -> int:
    tdist.init_process_group("gloo")
    for job in json.loads(Path(path).read_text()):
        stop_at = job.get("stop_at")
        kwargs = {}
        for action in ("signal", "nan", "fail"):
            if action in job:
                kwargs["step_fn"] = step_with(action, *job[action])
        try:
            train(
                Config.from_dict(job["config"]),
                Path(job["out"]),
                resume=job.get("resume", False),
                progress=False,
                should_stop=(lambda s, k=stop_at: s == k) if stop_at is not None else None,
                **kwargs,
            )
        except Interrupted as err:
            if stop_at is None and "signal" not in job:
                raise
            print(f"rank {tdist.get_rank()}: {err}", file=sys.stderr)
        except CmlearnError as err:
            print(f"rank {tdist.get_rank()}: error: {err}", file=sys.stderr)
            if "nan" not in job:
                return 2
    tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main(sys.argv[1]))  # as `cmlearn` ranks end: no teardown abort after success
