"""Kill trials: SIGKILL a training run at random moments, resume it, repeat; the final run
must equal an uninterrupted one (model, optimiser state, best model, metrics log). A trial
that finishes before the next kill lands is checked, and a new trial starts until the number
of kills is reached.

    python scripts/kill_trials.py --kills 20 [--seed 0] [--work DIR] [--json]

Checkpoints are written every 25 steps of a 2,000-step sinusoid run, so many kills land while
a checkpoint or the best model is being written (counted as "during a write": a temporary file
was left behind). Exit status 0 when the runs are equal, 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ARGS = [
    "--preset",
    "sinusoid-5shot-cpu",
    "--colearner",
    "cml",
    "--quiet",
    "--set",
    "train.val_every=25",
    "--set",
    "train.val_tasks=10",
    "--set",
    "train.log_every=5",
]


def _cmlearn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cmlearn", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"cmlearn exited {proc.returncode}: {err.decode().strip()}")


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two run folders' results (empty: identical)."""
    found = []
    for name, key in (
        ("checkpoint.pt", "net"),
        ("model.pt", "model"),
        ("colearner.pt", "colearner"),
    ):
        ta, tb = (torch.load(p / name, weights_only=True)[key] for p in (a, b))
        found += [f"{name}:{k}" for k in ta if not torch.equal(ta[k], tb[k])]
    oa, ob = (torch.load(p / "checkpoint.pt", weights_only=True)["optimizer"] for p in (a, b))
    for i, state in oa["state"].items():
        found += [
            f"adam:{i}:{k}" for k, v in state.items() if not torch.equal(v, ob["state"][i][k])
        ]
    if (a / "metrics.jsonl").read_text() != (b / "metrics.jsonl").read_text():
        found.append("metrics.jsonl")
    return found


def _args(steps: int) -> list[str]:
    return [*ARGS, "--steps", str(steps)]


def _step(run: Path) -> int:
    """The step of the run's last checkpoint (0 when there is none yet)."""
    path = run / "checkpoint.pt"
    return torch.load(path, weights_only=True)["state"]["step"] if path.exists() else 0


def kill_trials(kills: int, seed: int = 0, work: Path | None = None, steps: int = 2000) -> dict:
    """Run the reference, then the killed-and-resumed run; return counts and differences.

    Each kill lands uniformly in the time the process would still need (start-up plus the
    steps left after its checkpoint, timed on the reference run), so kills keep landing in
    every phase — imports, training, checkpoint writes — until the count is reached."""
    work = Path(work or tempfile.mkdtemp(prefix="cmlearn-kills-"))
    reference = work / "reference"
    started = time.monotonic()
    proc = _cmlearn(*_args(steps), "--out", str(reference))
    while proc.poll() is None and not (reference / "checkpoint.pt").exists():
        time.sleep(0.01)
    startup = time.monotonic() - started
    _finish(proc)
    per_step = (time.monotonic() - started - startup) / steps
    rng = random.Random(seed)
    done = during_write = starts = 0
    found: list[str] = []
    trials = 0
    while done < kills:  # trials until enough kills; each trial is checked on its own
        trial = work / f"trial-{trials}"
        trials += 1
        while True:
            fresh = not (trial / "config.json").exists()
            left = steps - _step(trial)
            proc = _cmlearn(*(_args(steps) if fresh else ["--resume"]), "--out", str(trial))
            starts += 1
            if done >= kills:
                _finish(proc)
                break
            time.sleep(rng.uniform(0.0, startup + left * per_step))
            if proc.poll() is not None:  # finished before the kill landed
                _finish(proc)
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done += 1
            during_write += any(trial.glob(".*.tmp"))
        found += [f"{trial.name}/{d}" for d in differences(reference, trial)]
    return {
        "kills": done,
        "kills_during_a_write": during_write,
        "starts": starts,
        "trials": trials,
        "differences": found,
        "work": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--work", type=Path)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = kill_trials(args.kills, args.seed, args.work, args.steps)
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "identical to" if not result["differences"] else "DIFFERENT from"
        print(
            f"{result['kills']} kills ({result['kills_during_a_write']} during a write), "
            f"{result['starts']} starts, {result['trials']} trials: every final run {verdict} "
            "the uninterrupted run"
            + (f" ({', '.join(result['differences'][:5])})" if result["differences"] else "")
        )
    return 0 if not result["differences"] else 1


if __name__ == "__main__":
    sys.exit(main())
