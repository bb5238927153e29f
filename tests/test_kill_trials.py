"""The kill-trial script (CI's 3-kill version): SIGKILL at random moments, resume, compare."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kill_trials.py"


def _script():
    spec = importlib.util.spec_from_file_location("kill_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_kills_leave_the_run_identical_to_an_uninterrupted_one(tmp_path):
    trials = _script()
    result = trials.kill_trials(3, seed=1, work=tmp_path, steps=400)
    assert result["kills"] == 3
    assert result["differences"] == []
    # the comparison itself can fail: a changed parameter or log is found
    reference, trial = tmp_path / "reference", tmp_path / "trial-0"
    ckpt = torch.load(trial / "checkpoint.pt", weights_only=True)
    next(iter(ckpt["net"].values())).add_(1e-6)
    torch.save(ckpt, trial / "checkpoint.pt")
    with open(trial / "metrics.jsonl", "a") as f:
        f.write("{}\n")
    found = trials.differences(reference, trial)
    assert any(d.startswith("checkpoint.pt:") for d in found) and "metrics.jsonl" in found


def test_hostile_probes_are_each_refused_in_one_line(tmp_path):
    """Every probe of ``--probes`` holds on a finished run (the score-cache probe is issue
    21's item 1, fixed in ``cmlearn.app.evaluate``'s cache)."""
    trials = _script()
    run = tmp_path / "run"
    proc = trials._cmlearn(*trials._args(20), "--out", str(run))
    trials._finish(proc)
    found = trials.probes(run, tmp_path)
    assert len(found) >= 15 and "bytes changed in colearner.pt" in found
    assert {k: v for k, v in found.items() if v is not None} == {}
