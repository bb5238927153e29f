"""Fuzzing the command line and ``--set``: every case is a one-line error or a valid run.

Random keys (real and invented), types and values (unicode, huge and negative numbers, NaN,
lists, objects) go through ``main`` exactly as a user's argv would. A case that the checks
accept must then build its data source and learner (where late errors would hide); a few
accepted cases are trained for real, in a subprocess with a timeout, so a hang fails too.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest

import cmlearn.app.train
from cmlearn.app.build import build_learner, build_source
from cmlearn.app.cli import main
from cmlearn.app.config import _flatten, get_preset
from cmlearn.core.registry import INTEGER

PRESETS = ["sinusoid-5shot-cpu", "sinusoid-10shot", "omniglot-5w1s-cpu", "nope", "", "ü"]
VALUES = [
    "0",
    "1",
    "2",
    "-1",
    "-3",
    "7",
    "0.5",
    "1.5",
    "-0.0",
    "1e-9",
    "1e400",
    "-1e400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[40.7]",
    "[1,2]",
    "1,2",
    "40,40",
    '"x"',
    "abc",
    "ü漢字",
    "",
    " ",
    "9" * 40,
    "-" + "9" * 25,
    "1=2",
    "[[1]]",
    '{"name": "mlp"}',
    '{"hidden": [3]}',
    "maml",
    "cml",
    "relu1",
    "conv",
    "vinyals",
    # spellings that were coerced (issue 21): an integer or a boolean is taken only as written
    "5.0",
    "1e1",
    "1e-400",
    "TRUE",
    "True",
    "\u0663",  # Arabic-Indic three
    "\uff11\uff12",  # full-width 12
    "1_0",
    "1e20",
    "100000",
]
FLAGS = {
    "--steps": ["1", "2", "0", "-5", "1e3", "x", "9" * 30, "\uff11\uff12", "1_0"],
    "--seed": ["0", "3", "-1", "2.5", "9" * 30, "\u0663"],
    "--algorithm": ["maml", "fomaml", "anil", "boil", "metasgd", "mamlpp", "reptile", ""],
    "--colearner": ["none", "cml", "random", "cl", "CML"],
}


def _keys() -> list[str]:
    keys = set()
    for name in ("sinusoid-5shot-cpu", "omniglot-5w1s-cpu"):
        keys |= set(_flatten(get_preset(name).to_dict()))
    return sorted(keys) + ["nokey", "task", "model.options.nope", "model.hidden", "ü.x", ""]


def _case(rng: random.Random, keys: list[str]) -> list[str]:
    argv = ["train", "--quiet"]
    if rng.random() < 0.95:
        argv += ["--preset", rng.choice(PRESETS[:3] * 4 + PRESETS[3:])]
    for flag, values in FLAGS.items():
        if rng.random() < 0.3:
            argv += [flag, rng.choice(values)]
    for _ in range(rng.randint(0, 4)):
        argv += ["--set", f"{rng.choice(keys)}={rng.choice(VALUES)}"]
    if rng.random() < 0.05:
        argv += [rng.choice(["--bogus", "--set", "-x", "ü"])]
    return argv


def _assert_spelled_strictly(argv: list[str], cfg) -> None:
    """An accepted ``--set`` of an integer setting was ASCII digits, of a boolean ``true`` or
    ``false`` (nothing coerced: ``5.0``, ``1e1``, ``TRUE``, ``１２`` are refused)."""
    flat = _flatten(cfg.to_dict())
    for i, arg in enumerate(argv[:-1]):
        if arg != "--set":
            continue
        key, _, raw = argv[i + 1].partition("=")
        value = flat.get(key.strip())
        if isinstance(value, bool):
            assert raw.strip() in ("true", "false"), argv
        elif isinstance(value, int):
            assert INTEGER.fullmatch(raw.strip()), argv


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def test_fuzzed_command_lines_are_one_line_errors_or_valid_runs(monkeypatch, capsys, tmp_path):
    accepted: list[tuple[list[str], object]] = []

    def build_only(cfg, out, **kwargs):  # what train does before its first step
        _assert_spelled_strictly(argv, cfg)
        source = build_source(cfg)
        build_learner(cfg, source)
        accepted.append((argv, cfg))
        return {"run": str(out)}

    monkeypatch.setattr(cmlearn.app.train, "train", build_only)
    rng = random.Random(2026)
    keys = _keys()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(600):
            argv = _case(rng, keys) + ["--out", str(tmp_path / f"r{i}")]
            signal.alarm(60)
            try:
                code = main(argv)
            except _Hang:
                pytest.fail(f"hang: {argv}")
            finally:
                signal.alarm(0)
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            if code == 0:
                assert not lines, (argv, err)
            else:
                assert code == 2, (argv, code, err)
                assert len(lines) == 1 and lines[0].startswith("cmlearn: error: "), (argv, err)
    finally:
        signal.signal(signal.SIGALRM, previous)
    # the generator reaches both outcomes often enough to mean something
    assert 30 <= len(accepted) <= 570, len(accepted)


@pytest.mark.parametrize("index", range(3))
def test_accepted_fuzzed_settings_train_for_real(index, monkeypatch, capsys, tmp_path):
    """Sinusoid cases the checks accept really train (2 steps), within a time limit."""
    monkeypatch.setattr(cmlearn.app.train, "train", lambda cfg, out, **kwargs: {})
    rng = random.Random(100 + index)
    keys = [k for k in _keys() if not k.startswith(("data", "train.steps", "train.val"))]
    for _ in range(500):
        argv = ["train", "--quiet", "--preset", "sinusoid-5shot-cpu", "--steps", "2"]
        for _ in range(2):
            argv += ["--set", f"{rng.choice(keys)}={rng.choice(VALUES)}"]
        argv += ["--set", "train.val_tasks=5", "--out", str(tmp_path / "r")]
        if main(argv) == 0:
            break
    else:
        pytest.fail("no accepted case drawn")
    capsys.readouterr()
    run = subprocess.run(
        [sys.executable, "-m", "cmlearn", *argv], capture_output=True, text=True, timeout=300
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 0 or (run.returncode == 2 and len(lines) == 1), (argv, run.stderr)
    assert "Traceback" not in run.stderr
