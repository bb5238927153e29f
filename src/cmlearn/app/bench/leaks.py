"""Memory-leak check: resident memory of a real training run after a few and after many steps.

A leak (a graph kept alive by a logged tensor, a growing history, cached tasks) shows as
growth between two late marks; start-up allocations, the data pool and the allocator's first
arenas are all in place by the first mark. The whole ``train`` loop runs (validation,
logging, checkpoints), not a bare step, because that is where leaks hide.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from cmlearn.app.config import Config, get_preset
from cmlearn.core.errors import CmlearnError

# name -> (preset, overrides): the sinusoid MLP and Conv-4 on Omniglot, small enough that
# 2,000 steps take minutes on one core (the leak check is about steps, not size).
WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "sinusoid": ("sinusoid-5shot-cpu", ["colearner.mode=cml"]),
    "conv4": (
        "omniglot-5w1s-cpu",
        ["colearner.mode=cml", "model.channels=16", "task.meta_batch=2", "task.queries=1"],
    ),
}
BOUND_MIB = 8.0  # allowed growth from the first to the last mark


def rss_mib() -> float:
    """Current resident set size (Linux ``/proc``; elsewhere the peak, an upper bound)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10


def workload(name: str, steps: int) -> Config:
    preset, overrides = WORKLOADS[name]
    every = max(steps // 10, 1)
    return get_preset(preset).override(
        [
            *overrides,
            f"train.steps={steps}",
            f"train.val_every={every}",
            f"train.log_every={max(every // 10, 1)}",
            "train.val_tasks=20",
            "train.threads=1",
        ]
    )


def memory_growth(name: str, marks: tuple[int, int] = (200, 2000), leak_kib: int = 0) -> dict:
    """Train workload ``name`` to ``marks[1]`` steps in a fresh process (memory that earlier
    work freed would otherwise absorb new allocations and hide a leak); resident MiB at each
    mark and the growth. ``leak_kib`` keeps that much per step alive: the check's own test."""
    code = (
        "import json, sys; from cmlearn.app.bench.leaks import _measure; "
        "print(json.dumps(_measure(sys.argv[1], (int(sys.argv[2]), int(sys.argv[3])), "
        "int(sys.argv[4]))))"
    )
    return fresh_json(["-c", code, name, *map(str, marks), str(leak_kib)], f"leak check {name}")


def fresh_json(args: list[str], what: str, timeout: float | None = None) -> dict:
    """Run ``python *args`` in a fresh process (memory figures must not inherit this
    process's heap) and return the JSON object its last output line prints; a failure is
    one line naming ``what``."""
    try:
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=os.environ.copy(),
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise CmlearnError(f"{what} failed: no result after {timeout:g} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise CmlearnError(f"{what} failed: {lines[-1]}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise CmlearnError(f"{what} failed: no JSON line in its output") from None


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``: Linux only)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise CmlearnError(f"no {field} in /proc/self/status (the memory figure needs Linux)")


def _measure(name: str, marks: tuple[int, int], leak_kib: int) -> dict:
    from cmlearn.app.train import outer_step, train

    seen: dict[int, float] = {}
    kept: list[torch.Tensor] = []

    def sample(step: int) -> bool:
        if step in marks:
            seen[step] = rss_mib()
        return False

    def step_fn(*args: Any) -> Any:
        kept.append(torch.ones(leak_kib * 256))  # float32: 256 per KiB
        return outer_step(*args)

    with tempfile.TemporaryDirectory(prefix="cmlearn-leak-") as tmp:
        train(
            workload(name, marks[1]),
            Path(tmp) / "run",
            progress=False,
            should_stop=sample,
            step_fn=step_fn if leak_kib else outer_step,
        )
    first, last = (seen[m] for m in marks)
    return {
        "workload": name,
        "marks": list(marks),
        "rss_mib": [round(first, 1), round(last, 1)],
        "growth_mib": round(last - first, 2),
        "bound_mib": BOUND_MIB,
        "ok": last - first <= BOUND_MIB,
    }
