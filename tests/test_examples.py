"""The scripts in examples/ run at a tiny size, and the shell reads the folders they write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_own_cnn_compares_maml_cml_and_cml_dagger_and_the_shell_reads_its_folders(tmp_path):
    out = tmp_path / "own-cnn"
    table = run(EXAMPLES / "own_cnn.py", "--tiny", "--out", out, cwd=tmp_path)
    assert all(row in table for row in ("maml ", "cml ", "cml† ", "Δ vs maml (paired)"))
    config = json.loads((out / "cml-s0" / "config.json").read_text())
    assert config["model"]["name"].endswith("own_cnn.py:SmallCNN")
    shown = run("-m", "cmlearn", "eval", out / "cml-s0", "--json", cwd=tmp_path)
    assert json.loads(shown)["n_tasks"] == 20
    again = run(
        "-m", "cmlearn", "compare", "--like", out / "maml-s0", "--methods", "maml,cml",
        "--out", out, "--quiet", "--json", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(again.splitlines()[0])
    assert [r["method"] for r in report["summary"]] == ["maml", "cml", "cml†"]
    assert report["paired"][0]["method"] == "cml"
    # the Fig. 3 analyses of a user's CNN, with where each term's gradient enters its map
    run("-m", "cmlearn", "analyze", out / "maml-s0", out / "cml-s0", "--tasks", "3",
        "--out", tmp_path / "analysis", cwd=tmp_path)  # fmt: skip
    analysis = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert [r["colearner"] for r in analysis["runs"]] == ["none", "cml"]
    for r in analysis["runs"]:  # its co-learner reads the flattened map: no positions to share
        assert r["positions"] == {"skipped": "needs the per-task loop and a spatial body output"}


@pytest.mark.parametrize("script", ["own_regression.py", "functional_loop.py"])
def test_the_other_examples_run_at_a_tiny_size(script, tmp_path):
    args = ["--tiny"] + (["--out", str(tmp_path / "runs")] if script == "own_regression.py" else [])
    printed = run(EXAMPLES / script, *args, cwd=tmp_path)
    assert ("mse" in printed) if script == "own_regression.py" else ("test accuracy" in printed)
