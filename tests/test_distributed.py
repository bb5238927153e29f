"""Distributed meta-training: 2 CPU processes (gloo) against one process.

Each launch is a real torchrun (``torch.distributed.run --standalone``, a free port of its
own) with a wall-clock limit, so a hang fails the test instead of stalling CI. Float
tolerance: the ranks sum their shares' gradients in another order than one process sums the
whole batch, so parameters agree to rounding (float32: |Δ| ≤ 1e-6 + 1e-5·|x| after 8 Adam
steps; measured about 1e-8), while a resumed 2-rank run equals the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from cmlearn.app.cli import main as cli_main
from cmlearn.app.config import get_preset
from cmlearn.app.runs import CHECKPOINT
from cmlearn.app.train import train

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()), reason="no gloo backend"
)

WORKER = Path(__file__).with_name("distributed_worker.py")
LIMIT_S = 120  # per launch: far above the ~10 s one takes on a busy 2-core machine
RANK_TIMEOUT_S = 60  # CMLEARN_DIST_TIMEOUT: how long a rank waits for a silent peer
ATOL, RTOL = 1e-6, 1e-5


def _cfg(meta_batch: int, *extra: str):
    """The sinusoid CPU preset shrunk to 8 steps of a small MLP with a co-learner."""
    return get_preset("sinusoid-5shot-cpu").override(
        [
            "train.steps=8",
            "train.val_every=4",
            "train.val_tasks=10",
            "train.log_every=2",
            "model.hidden=16,16",
            "colearner.head.hidden=8",
            "colearner.mode=cml",
            f"task.meta_batch={meta_batch}",
            *extra,
        ]
    )


def _launch(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` with one thread per process; stop it (launcher, then ranks) on a hang."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CMLEARN_DIST_TIMEOUT=str(RANK_TIMEOUT_S))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to the ranks
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} … hung for {LIMIT_S} s:\n{err[-3000:]}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return result, time.perf_counter() - start


def _torchrun_worker(jobs: list[dict], tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    spec = tmp / f"jobs-{len(list(tmp.glob('jobs-*')))}.json"
    spec.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return _launch([*cmd, str(WORKER), str(spec)])


def _job(cfg, out: Path, **options) -> dict:
    return {"config": cfg.to_dict(), "out": str(out), **options}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _state(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor that training moves: parameters, step sizes, Adam's moments."""
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    flat = {f"net.{k}": v for k, v in ckpt["net"].items()}
    flat |= {f"step_sizes.{k}": v for k, v in ckpt["step_sizes"].items()}
    for i, s in ckpt["optimizer"]["state"].items():
        flat |= {f"adam.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)}
    return flat | {"step": torch.tensor(ckpt["state"]["step"])}


def _assert_close_runs(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=ATOL, rtol=RTOL, msg=k)
    ra, rb = _records(a), _records(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x["step"] == y["step"]
        for key in x.keys() - {"step", "gradients"}:
            assert x[key] == pytest.approx(y[key], rel=RTOL, abs=ATOL), (x, key)
        if "gradients" in x:
            for layer, stats in x["gradients"].items():
                for name, value in stats.items():
                    assert value == pytest.approx(y["gradients"][layer][name], rel=1e-4, abs=1e-6)


def _assert_same_runs(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert _records(a) == _records(b)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One 2-rank launch: an even and an uneven (5 over 2) meta-batch, the uneven run
    interrupted twice (``should_stop`` at step 3; SIGTERM to rank 1 alone during step 5),
    each then resumed, and a run whose loss becomes NaN on rank 1 alone at step 5."""
    tmp = tmp_path_factory.mktemp("ddp")
    uneven = _cfg(5, "train.analysis_every=4")
    jobs = [
        _job(_cfg(4), tmp / "even"),
        _job(uneven, tmp / "uneven"),
        _job(uneven, tmp / "stopped", stop_at=3),
        _job(uneven, tmp / "stopped", resume=True),
        _job(uneven, tmp / "signalled", signal=[1, 5]),
        _job(uneven, tmp / "signalled", resume=True),
        _job(_cfg(4), tmp / "nan", nan=[1, 5]),
    ]
    proc, _ = _torchrun_worker(jobs, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp / "stderr.txt").write_text(proc.stderr)
    return tmp


@pytest.mark.parametrize("name, meta_batch", [("even", 4), ("uneven", 5)])
def test_two_ranks_equal_one_process(two_ranks, tmp_path, name, meta_batch):
    extra = ["train.analysis_every=4"] if name == "uneven" else []
    train(_cfg(meta_batch, *extra), tmp_path / "one", progress=False)
    _assert_close_runs(two_ranks / name, tmp_path / "one")


@pytest.mark.parametrize("run", ["stopped", "signalled"])
def test_an_interrupted_two_rank_run_resumes_exactly(two_ranks, run):
    stderr = (two_ranks / "stderr.txt").read_text()
    step = 3 if run == "stopped" else 6  # SIGTERM during step 5 (0-based): stop after it
    for rank in (0, 1):  # every rank stopped after the same step (rank 0 saved it)
        assert any(
            line.startswith(f"rank {rank}: ") and f"at step {step}; saved" in line
            for line in stderr.splitlines()
            if f"/{run} " in line
        ), stderr
    _assert_same_runs(two_ranks / run, two_ranks / "uneven")


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    stderr = (two_ranks / "stderr.txt").read_text()
    assert "rank 1: error: loss became nan at step 5; stopped." in stderr
    assert "rank 0: error: loss became nan at step 5; stopped. The best model (step 4)" in stderr
    assert torch.load(two_ranks / "nan" / CHECKPOINT, weights_only=True)["state"]["step"] == 4


def test_a_failing_rank_brings_the_job_down_with_a_message(tmp_path):
    proc, seconds = _torchrun_worker([_job(_cfg(4), tmp_path / "run", fail=[1, 3])], tmp_path)
    assert proc.returncode != 0
    assert "injected failure on rank 1 at step 3" in proc.stderr
    assert "rank 0 lost the other ranks" in proc.stderr  # one line, not a traceback
    assert seconds < RANK_TIMEOUT_S, "the job ended by timing out, not by noticing the failure"


def test_cli_nproc_launches_torchrun_and_matches_one_process(tmp_path):
    sets = [
        "train.val_every=4",
        "train.val_tasks=10",
        "train.log_every=2",
        "model.hidden=16,16",
        "colearner.head.hidden=8",
        "task.meta_batch=5",
    ]
    args = ["--preset", "sinusoid-5shot-cpu", "--colearner", "cml", "--steps", "8", "--quiet"]
    args += [x for s in sets for x in ("--set", s)]
    cmd = [sys.executable, "-m", "cmlearn", "train", "--nproc", "2", "--out", str(tmp_path / "two")]
    proc, _ = _launch([*cmd, *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved == json.loads(json.dumps(_cfg(5).to_dict()))
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 8  # rank 0 alone reports
    train(_cfg(5), tmp_path / "one", progress=False)
    _assert_close_runs(tmp_path / "two", tmp_path / "one")


def test_cli_nproc_is_checked_before_launching(tmp_path, capsys, monkeypatch):
    base = ["train", "--preset", "sinusoid-5shot-cpu", "--out", str(tmp_path / "r")]
    assert cli_main([*base, "--nproc", "0"]) == 2
    assert "--nproc must be positive" in capsys.readouterr().err
    assert cli_main([*base, "--nproc", "3", "--set", "task.meta_batch=2"]) == 2
    assert "task.meta_batch is 2" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli_main([*base, "--nproc", "2"]) == 2
    assert "cmlearn[rank 1]: error: --nproc starts torchrun itself" in capsys.readouterr().err


def test_the_ddp_benchmark_is_skipped_without_omniglot(tmp_path):
    from cmlearn.app.bench.ddp import ddp_2proc_speedup

    result = ddp_2proc_speedup(data_root=tmp_path)
    assert result["status"] == "skipped" and "images_background.zip" in result["note"]


def test_the_ddp_benchmark_times_the_all_reduce_under_the_step_being_timed():
    from cmlearn.app.bench.ddp import _timed

    calls = []
    into: dict[str, list[float]] = {"maml": [], "cml": []}
    timing = {"mode": "cml"}
    reduce = _timed(lambda *a, **k: calls.append((a, k)) or "summed", into, timing)
    assert reduce([1], stats=[2.0]) == "summed" and calls == [(([1],), {"stats": [2.0]})]
    timing["mode"] = "maml"
    with pytest.raises(ZeroDivisionError):  # a failing reduce is still timed, and re-raised
        _timed(lambda: 1 / 0, into, timing)()
    assert len(into["cml"]) == 1 and len(into["maml"]) == 1
    assert all(t >= 0 for t in into["cml"] + into["maml"])
