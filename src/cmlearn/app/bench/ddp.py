"""Distributed throughput: 2 ranks × 1 thread against 1 process × 1 thread.

``ddp_2proc_speedup`` times the training meta-step of the ``omniglot-5w1s-cpu`` preset
(Conv-4, meta-batch 8, ``outer_step`` with Adam: what ``cmlearn train`` runs) once in one
process and once split over two torchrun ranks (gloo, one task share each, one all-reduce per
step), both at one thread per process, and reports the throughput ratio (goal ≥ 1.6 on two
cores) and CML's step-time overhead over MAML in each setting. Each setting runs in fresh
processes (``python -m cmlearn.app.bench.ddp --worker``); only the timed steps count, not start-up
or data loading, and the settings alternate repeat by repeat so that drift on a shared machine
hits both. Other processes using the cores make the ratio meaningless: the result carries
their CPU share (``other_processes_cpu_share``) to say so. Where the time goes: the ceiling
(two independent processes on half the meta-batch each, no communication) and each rank's
seconds inside the all-reduce (``allreduce_s_per_step``, ``allreduce_share``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmlearn.core.errors import CmlearnError

PRESET = "omniglot-5w1s-cpu"
GOAL = 1.6
NAMES = {1: "1proc", 2: "2proc", 0: "2independent"}
MODES = ("maml", "cml")


def ddp_2proc_speedup(
    repeats: int = 3,
    steps: int = 5,
    warmup: int = 2,
    data_root: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    limit_s: float = 600.0,
) -> dict[str, Any]:
    """Throughput of 2 ranks × 1 thread over 1 process × 1 thread on the Omniglot meta-step,
    and CML's overhead in both; medians over ``repeats`` launches of each setting, each
    timing ``steps`` meta-steps per method after ``warmup`` untimed ones. Without the data it
    returns ``{"status": "skipped", "note": …}``."""
    from cmlearn.app.bench.measure import busy_cpu_s
    from cmlearn.app.data.omniglot import zip_paths
    from cmlearn.app.runtime import default_data_root

    root = Path(data_root) if data_root else default_data_root()
    missing = [p for p in zip_paths(root) if not p.is_file()]
    if missing:
        return {"status": "skipped", "note": f"DDP benchmark skipped: no {missing[0]}"}
    times: dict[int, list[dict[str, float]]] = {1: [], 2: [], 0: []}  # 0: 2 independent
    reduce_s: list[list[dict[str, float]]] = [[], []]  # per rank: seconds inside the all-reduce
    start, busy, ours = time.perf_counter(), busy_cpu_s(), _children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="cmlearn-ddp-") as tmp:
        for r in range(repeats):
            for world in (1, 2, 0) if r % 2 == 0 else (0, 2, 1):
                label = {1: "1 process", 2: "2 ranks", 0: "2 independent processes"}[world]
                log(f"ddp: repeat {r + 1}/{repeats}, {label}")
                out = Path(tmp) / f"w{world}-r{r}.json"
                spec = {"steps": steps, "warmup": warmup, "data_root": str(root), "out": str(out)}
                if world:
                    _launch(world, spec, limit_s)
                    times[world].append(json.loads(out.read_text()))
                    for rank in range(world if world > 1 else 0):
                        rank_out = out.with_suffix(f".rank{rank}.json")
                        reduce_s[rank].append(json.loads(rank_out.read_text()))
                else:
                    times[0].append(_launch_independent(spec, limit_s))
    wall = time.perf_counter() - start
    median = {w: {m: statistics.median(t[m] for t in times[w]) for m in MODES} for w in times}
    speedup = median[1]["maml"] / median[2]["maml"]  # same meta-batch: the throughput ratio
    # what 2 processes can reach on this machine with no communication at all: each runs half
    # the meta-batch alone, at the same time (shared caches, memory bandwidth, clocks)
    ceiling = median[1]["maml"] / median[0]["maml"]
    result: dict[str, Any] = {
        "status": "ok",
        "preset": PRESET,
        "threads_per_process": 1,
        "repeats": repeats,
        "steps": steps,
        "warmup_steps": warmup,
        "s_per_step": {NAMES[w]: median[w] for w in median},
        "s_per_step_repeats": {NAMES[w]: times[w] for w in times},
        "ddp_2proc_speedup": speedup,
        "ddp_2proc_ceiling": ceiling,
        "ddp_efficiency": speedup / ceiling,
        "cml_overhead_ddp": median[2]["cml"] / median[2]["maml"],
        # each rank's median seconds per step inside the all-reduce, and its share of the step:
        # the faster rank waits there for the slower one, so a large share on one rank is
        # imbalance, a large share on both is communication
        "allreduce_s_per_step": [
            {m: statistics.median(t[m] for t in per_rank) for m in MODES} for per_rank in reduce_s
        ],
        "allreduce_share": [
            statistics.median(t["maml"] for t in per_rank) / median[2]["maml"]
            for per_rank in reduce_s
        ],
        "cml_overhead_1proc": median[1]["cml"] / median[1]["maml"],
        "goal": {"value": speedup, "goal": f">= {GOAL}", "met": speedup >= GOAL},
        "wall_s": round(wall, 1),
    }
    end = busy_cpu_s()
    if busy is not None and end is not None:  # minus this process and the launched ones
        mine = (end[1] - busy[1]) + (_children_cpu_s() - ours)
        others = (end[0] - busy[0]) - mine
        result["other_processes_cpu_share"] = max(0.0, others / ((os.cpu_count() or 1) * wall))
    return result


def _children_cpu_s() -> float:
    """CPU seconds of the finished processes this one started (and theirs)."""
    t = os.times()
    return t.children_user + t.children_system


def _launch(world: int, spec: dict[str, Any], limit_s: float) -> None:
    """One setting in fresh processes: plain Python for 1, torchrun for 2."""
    path = Path(spec["out"]).with_suffix(".spec.json")
    path.write_text(json.dumps(spec))
    worker = ["-m", "cmlearn.app.bench.ddp", "--worker", str(path)]
    if world > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
        worker = [*launcher, *worker]
    env = dict(os.environ, OMP_NUM_THREADS="1", CMLEARN_DATA=spec["data_root"])
    proc = subprocess.run(
        [sys.executable, *worker], env=env, capture_output=True, text=True, timeout=limit_s
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise CmlearnError(f"DDP benchmark worker ({world} process(es)) failed: {' | '.join(tail)}")


def _launch_independent(spec: dict[str, Any], limit_s: float) -> dict[str, float]:
    """Two single processes at once, each timing half the meta-batch; the slower one's
    seconds per step (the pair finishes a full meta-batch when both have)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CMLEARN_DATA=spec["data_root"])
    procs, outs = [], []
    for half in (0, 1):
        out = Path(spec["out"]).with_suffix(f".half{half}.json")
        path = out.with_suffix(".spec.json")
        path.write_text(json.dumps(spec | {"out": str(out), "half": half}))
        worker = [sys.executable, "-m", "cmlearn.app.bench.ddp", "--worker", str(path)]
        procs.append(subprocess.Popen(worker, env=env, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    for proc in procs:
        _, err = proc.communicate(timeout=limit_s)
        if proc.returncode != 0:
            tail = err.strip().splitlines()[-3:]
            raise CmlearnError(f"DDP benchmark worker (independent) failed: {' | '.join(tail)}")
    halves = [json.loads(out.read_text()) for out in outs]
    return {m: max(h[m] for h in halves) for m in MODES}


def _worker(spec_path: Path) -> None:
    """Time ``outer_step`` of MAML and CML (interleaved) at one thread; rank 0 writes the
    median seconds per step."""
    from cmlearn.app.build import build_learner, build_source
    from cmlearn.app.config import get_preset
    from cmlearn.app.distributed import join
    from cmlearn.app.runtime import Runtime
    from cmlearn.app.train import make_optimizer, outer_step
    from cmlearn.core.tasks import generator

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(1)
    runtime = Runtime.resolve(Path(spec["data_root"]), "cpu")
    with join(runtime.device) as dist:
        base = get_preset(PRESET).override(["colearner.mode=none", "train.threads=1"])
        source = build_source(base, runtime)
        batch = source.sample(base.task.meta_batch, generator("train", base.train.seed, 0))
        if "half" in spec:  # one of two independent processes: its half of the meta-batch
            n = batch.n_tasks // 2
            batch = batch[spec["half"] * n : (spec["half"] + 1) * n]
        kwargs = {"dist": dist} if dist.active else {}
        stepping = {}
        for mode in MODES:
            cfg = base.override([f"colearner.mode={'cml' if mode == 'cml' else 'none'}"])
            learner = build_learner(cfg, source, runtime.device)
            optimizer = make_optimizer(learner, cfg)
            stepping[mode] = lambda le=learner, opt=optimizer: outer_step(
                le, opt, batch, 0.0, **kwargs
            )
        for _ in range(spec["warmup"]):
            for mode in MODES:
                stepping[mode]()
        seconds: dict[str, list[float]] = {m: [] for m in MODES}
        reducing: dict[str, list[float]] = {m: [] for m in MODES}  # inside the all-reduce
        timing = {"mode": ""}
        if dist.active:
            dist.reduce = _timed(dist.reduce, reducing, timing)
        for i in range(spec["steps"]):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                timing["mode"] = mode
                t0 = time.perf_counter()
                stepping[mode]()  # ends in the all-reduce: every rank has finished the step
                seconds[mode].append(time.perf_counter() - t0)
        if dist.active:  # each rank: how long it sat in the all-reduce (waiting + sending)
            rank_out = Path(spec["out"]).with_suffix(f".rank{dist.rank}.json")
            rank_out.write_text(json.dumps({m: statistics.median(s) for m, s in reducing.items()}))
        if dist.main:
            result = {m: statistics.median(s) for m, s in seconds.items()}
            Path(spec["out"]).write_text(json.dumps(result))


def _timed(reduce: Callable, into: dict[str, list[float]], timing: dict[str, str]) -> Callable:
    """``reduce`` that also adds its seconds to ``into[timing["mode"]]``: on the faster rank
    that is mostly waiting for the slower one, on the slower rank the communication itself
    (plus packing the gradients into one bucket and copying them back)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return reduce(*args, **kwargs)
        finally:
            into[timing["mode"]].append(time.perf_counter() - t0)

    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmlearn.app.bench.ddp", description=__doc__)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return 0

    def log(line: str) -> None:
        print(f"... {line}", file=sys.stderr)

    try:
        print(json.dumps(ddp_2proc_speedup(args.repeats, args.steps, args.warmup, log=log)))
    except CmlearnError as err:
        print(f"cmlearn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
