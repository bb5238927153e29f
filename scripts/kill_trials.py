"""Kill trials: SIGKILL a training run at random moments, resume it, repeat; the final run
must equal an uninterrupted one (model, optimiser state, best model, metrics log). A trial
that finishes before the next kill lands is checked, and a new trial starts until the number
of kills is reached.

    python scripts/kill_trials.py --kills 20 [--seed 0] [--work DIR] [--json] [--probes]

Checkpoints are written every 25 steps of a 2,000-step sinusoid run, so many kills land while
a checkpoint or the best model is being written (counted as "during a write": a temporary file
was left behind). Exit status 0 when the runs are equal, 1 when they differ.

``--probes`` then damages copies of the finished run as a hostile user would (bytes changed
inside every ``.pt``, a damaged score cache, an edited ``config.json``, a lock symlinked to
another file, foreign and mixed-kind folders, integer and boolean spellings, huge thread
counts) and requires each to be refused in one line, or (the score cache) to give the right
number; a failing probe makes the exit status 1. A disk full at start is not probed here (it
needs a full filesystem): ``tests/test_faults.py`` fakes one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
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


def _overwrite_inside(path: Path, n: int = 8) -> None:
    """Change ``n`` bytes in the middle of ``path``'s largest record (a tensor's data) or, for
    a file that is no archive (a ``.npy``: its data comes last), just before its last ``n``."""
    data = bytearray(path.read_bytes())
    at = max(len(data) - 2 * n, 0)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        head = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[head + 26 : head + 30])
        at = head + 30 + name_len + extra_len + info.file_size // 2
    data[at : at + n] = bytes((b + 1) % 256 for b in data[at : at + n])
    path.write_bytes(bytes(data))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cmlearn", *args], capture_output=True, text=True, env=env
    )


def _refused(result: subprocess.CompletedProcess, expect: str) -> str | None:
    """None when ``result`` is a one-line error containing ``expect``; else what went wrong."""
    lines = result.stderr.strip().splitlines()
    if result.returncode == 2 and len(lines) == 1 and expect in lines[0]:
        return None
    return f"exit {result.returncode}, stderr {result.stderr.strip()[-300:]!r}"


def probes(run: Path, work: Path, skip: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Damage copies of the finished ``run`` in ``work``; each probe's failure (None: held)."""
    found: dict[str, str | None] = {}
    steps = str(_step(run) + 10)

    def copy(name: str) -> Path:
        target = work / f"probe-{name}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run, target)
        return target

    for pt in sorted(p.name for p in run.glob("*.pt")):
        probe = copy(pt)
        _overwrite_inside(probe / pt)
        if pt == "checkpoint.pt":
            result = _cli("train", "--out", str(probe), "--resume", "--steps", steps, "--quiet")
        else:
            result = _cli("eval", str(probe), "--tasks", "10", "--quiet")
        found[f"bytes changed in {pt}"] = _refused(result, str(probe / pt))
    if "score cache" not in skip:
        probe = copy("scores")
        first = _cli("eval", str(probe), "--tasks", "10", "--json", "--quiet")
        for npy in (probe / "scores").glob("*.npy"):
            _overwrite_inside(npy)
        again = _cli("eval", str(probe), "--tasks", "10", "--json", "--quiet")
        same = first.returncode == again.returncode == 0 and first.stdout == again.stdout
        found["damaged score cache"] = (
            None
            if same and "NaN" not in again.stdout
            else (f"first {first.stdout.strip()!r}, after damage {again.stdout.strip()!r}")
        )
    probe = copy("config")
    config = json.loads((probe / "config.json").read_text())
    config["inner"]["lr"] = config["inner"]["lr"] * 2
    (probe / "config.json").write_text(json.dumps(config))
    found["edited config.json, resume"] = _refused(
        _cli("train", "--out", str(probe), "--resume", "--steps", steps, "--quiet"), "inner.lr"
    )
    found["edited config.json, eval"] = _refused(_cli("eval", str(probe), "--quiet"), "inner.lr")
    probe = copy("lock")
    victim = work / "victim.txt"
    victim.write_text("precious\n")
    (probe / ".lock").unlink(missing_ok=True)
    (probe / ".lock").symlink_to(victim)
    result = _cli("train", "--out", str(probe), "--resume", "--steps", steps, "--quiet")
    found["symlinked lock"] = _refused(result, "symbolic link") or (
        None if victim.read_text() == "precious\n" else "the lock's target was changed"
    )
    foreign = work / "probe-foreign"
    foreign.mkdir(exist_ok=True)
    (foreign / "notes.txt").write_text("keep\n")
    train = ["train", *ARGS, "--steps", "2"]
    found["train into a foreign folder"] = _refused(
        _cli(*train, "--out", str(foreign)), "holds no cmlearn"
    )
    found["compare into a run folder"] = _refused(
        _cli(
            "compare",
            "--preset",
            "sinusoid-5shot-cpu",
            "--methods",
            "maml",
            "--steps",
            "2",
            "--quiet",
            "--out",
            str(run),
        ),  # fmt: skip
        "is a train run folder",
    )
    for setting in (
        "task.shots=5.0",
        "task.shots=1e1",
        "inner.first_order=1",
        "inner.first_order=TRUE",
        "task.context=\u0663",
        "train.steps=\uff11\uff12",
        "train.threads=1e20",
        "train.threads=100000",
    ):
        out = work / "probe-setting"
        shutil.rmtree(out, ignore_errors=True)
        result = _cli(*train, "--set", setting, "--out", str(out))
        found[f"--set {setting}"] = _refused(result, setting.split("=")[0].split(".")[-1]) or (
            "left a folder behind" if out.exists() else None
        )
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--work", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--probes", action="store_true", help="then damage copies of the run")
    args = p.parse_args(argv)
    result = kill_trials(args.kills, args.seed, args.work, args.steps)
    if args.probes:
        work = Path(result["work"])
        result["probes"] = probes(work / "reference", work)
        failed = [f"{k}: {v}" for k, v in result["probes"].items() if v is not None]
        result["differences"] += [f"probe {line}" for line in failed]
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
        if args.probes:
            held = sum(v is None for v in result["probes"].values())
            print(
                f"probes: {held} of {len(result['probes'])} hold (each refused in one line; a "
                "damaged score cache rescored to the same number)"
            )
    return 0 if not result["differences"] else 1


if __name__ == "__main__":
    sys.exit(main())
