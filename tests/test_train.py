"""Reproducibility, exact resume, interruption and divergence handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmlearn import CmlearnError
from cmlearn.app.runs import CHECKPOINT, MODEL
from cmlearn.app.train import Interrupted, train


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _net(run: Path) -> dict:
    return torch.load(run / CHECKPOINT)["net"]


def _assert_same_run(a: Path, b: Path) -> None:
    na, nb = _net(a), _net(b)
    assert na.keys() == nb.keys()
    for k in na:
        assert torch.equal(na[k], nb[k]), k
    assert _records(a) == _records(b)
    oa = torch.load(a / CHECKPOINT)["optimizer"]["state"]
    ob = torch.load(b / CHECKPOINT)["optimizer"]["state"]
    for i in oa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa[i][key], ob[i][key])


@pytest.fixture
def cml_cfg(tiny_cfg):
    return tiny_cfg.override(["colearner.mode=cml"])


def test_same_seed_gives_identical_metrics(cml_cfg, tmp_path):
    train(cml_cfg, tmp_path / "a", progress=False)
    train(cml_cfg, tmp_path / "b", progress=False)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    other = train(cml_cfg.override(["train.seed=1"]), tmp_path / "c", progress=False)
    assert _records(Path(other["run"])) != _records(tmp_path / "a")


def test_train_n_then_resume_n_equals_train_2n(cml_cfg, tmp_path):
    train(cml_cfg, tmp_path / "full", progress=False)
    half = cml_cfg.override(["train.steps=20"])
    train(half, tmp_path / "split", progress=False)
    train(cml_cfg, tmp_path / "split", resume=True, progress=False)
    _assert_same_run(tmp_path / "full", tmp_path / "split")


def test_interrupted_run_resumes_exactly(cml_cfg, tmp_path):
    train(cml_cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted, match="resume"):
        train(cml_cfg, tmp_path / "cut", progress=False, should_stop=lambda step: step == 27)
    assert torch.load(tmp_path / "cut" / CHECKPOINT)["state"]["step"] == 27
    train(cml_cfg, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    assert not list((tmp_path / "cut").glob(".*.tmp")), "atomic writes leave no temp files"


def test_existing_run_is_not_overwritten(cml_cfg, tmp_path):
    train(cml_cfg, tmp_path / "a", progress=False)
    with pytest.raises(CmlearnError, match="already holds a run"):
        train(cml_cfg, tmp_path / "a", progress=False)
    with pytest.raises(CmlearnError, match="no checkpoint"):
        train(cml_cfg, tmp_path / "empty", resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_best_checkpoint(cml_cfg, tmp_path, monkeypatch):
    from cmlearn.core.engine import Learner

    original = Learner.meta_objective
    calls = {"n": 0}

    def poisoned(self, batch, progress=0.0):
        loss, terms = original(self, batch, progress)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 25 else loss), terms

    monkeypatch.setattr(Learner, "meta_objective", poisoned)
    with pytest.raises(CmlearnError, match="loss became nan at step 25"):
        train(cml_cfg, tmp_path / "run", progress=False)
    best = torch.load(tmp_path / "run" / MODEL)
    assert best["step"] == 20
    assert all(torch.isfinite(v).all() for v in best["model"].values())


def test_gradient_analysis_is_logged_on_request(cml_cfg, tmp_path):
    train(cml_cfg.override(["train.analysis_every=10"]), tmp_path / "a", progress=False)
    records = [r for r in _records(tmp_path / "a") if "gradients" in r]
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    layer = records[0]["gradients"]["fc1"]
    assert layer["meta_norm"] > 0 and layer["co_norm"] > 0 and -1 <= layer["cosine"] <= 1


def test_a_log_without_a_checkpoint_is_never_overwritten(cml_cfg, tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 2, "train_loss": 9}\n')
    with pytest.raises(CmlearnError, match="holds no cmlearn run"):
        train(cml_cfg, run, progress=False)
    (run / "config.json").write_text(json.dumps(cml_cfg.to_dict()))  # checkpoint.pt deleted
    for resume in (False, True):
        with pytest.raises(CmlearnError, match="but no checkpoint.pt: refusing to restart"):
            train(cml_cfg, run, resume=resume, progress=False)
    assert (run / "metrics.jsonl").read_text() == '{"step": 2, "train_loss": 9}\n'


def test_resume_drops_a_torn_analysis_record(cml_cfg, tmp_path):
    run = tmp_path / "a"
    cfg = cml_cfg.override(["train.analysis_every=10"])
    with pytest.raises(Interrupted):
        train(cfg, run, progress=False, should_stop=lambda step: step == 20)
    # a kill after the next analysis record, mid-way through writing a line
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 20, "gradients": {}}\n{"step": 2')
    train(cfg, run, resume=True, progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert _records(run) == _records(tmp_path / "b")


def test_model_and_colearner_from_different_steps_are_refused(cml_cfg, tmp_path):
    from cmlearn.app.runs import COLEARNER, load_run

    run = Path(train(cml_cfg, tmp_path / "a", progress=False)["run"])
    co = torch.load(run / COLEARNER)
    co["step"] -= 20
    torch.save(co, run / COLEARNER)
    with pytest.raises(CmlearnError, match="different steps"):
        load_run(run)


def test_resume_keeps_the_length_when_the_rule_follows_training_progress(tiny_cfg, tmp_path):
    """MAML++'s schedules are fractions of training: another --steps would change the past."""
    from cmlearn import CmlearnError

    cfg = tiny_cfg.with_algorithm("mamlpp")
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "r", progress=False, should_stop=lambda step: step == 10)
    with pytest.raises(CmlearnError, match="keeps --steps 40"):
        train(cfg.apply([("train.steps", 80)]), tmp_path / "r", resume=True, progress=False)
    train(cfg, tmp_path / "r", resume=True, progress=False)  # the same length resumes


def test_maml_logs_its_own_gradient_norms_for_fig_3c(tiny_cfg, tmp_path):
    train(tiny_cfg.override(["train.analysis_every=10"]), tmp_path / "m", progress=False)
    records = [
        json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    ]
    grads = [r["gradients"] for r in records if "gradients" in r]
    assert len(grads) == 4
    for layer in grads[0].values():
        assert layer["meta_norm"] > 0 and layer["co_norm"] is None and layer["cosine"] is None
