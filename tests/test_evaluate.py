"""Confidence intervals, paired differences and the shared test tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmlearn.app.evaluate import batches, fixed_tasks, paired, summarize
from cmlearn.core.tasks import SinusoidSource


def test_summary_is_mean_and_t_interval():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    s = summarize(values)
    # t(0.975, 3) = 3.182446305284263; std = 1.2909944487358056
    assert s["mean"] == 2.5
    assert s["ci95"] == pytest.approx(3.182446305284263 * 1.2909944487358056 / 2)
    assert math.isnan(summarize(np.array([1.0]))["ci95"])


def test_paired_difference_removes_shared_task_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, 500)
    a = difficulty + rng.normal(0, 0.1, 500)
    b = difficulty + 0.5 + rng.normal(0, 0.1, 500)
    d = paired(b, a)
    assert d["mean"] == pytest.approx(0.5, abs=0.05)
    assert d["ci95"] < summarize(b)["ci95"] / 10
    with pytest.raises(ValueError):
        paired(a, b[:10])


def test_test_tasks_are_fixed_and_prefix_stable(monkeypatch):
    import cmlearn.app.evaluate

    monkeypatch.setattr(cmlearn.app.evaluate, "CHUNK", 8)  # several chunks
    source = SinusoidSource(5, 10, 20)
    a = batches(fixed_tasks(source, 30, 7, "test"))
    b = batches(fixed_tasks(source, 12, 7, "test"))
    assert torch.equal(
        torch.cat([c.support_x for c in a])[:12], torch.cat([c.support_x for c in b])
    )
    val = batches(fixed_tasks(source, 30, 7, "val"))
    assert not torch.equal(a[0].support_x, val[0].support_x)
    assert a[0].query_x.shape[1] == 20  # evaluation uses eval_queries
    assert [c.n_tasks for c in batches(fixed_tasks(source, 30, 7, "test"), 5)] == [5, 3] * 3 + [
        5,
        1,
    ]


def test_run_scores_are_cached_by_everything_they_depend_on(tmp_path, monkeypatch):
    import cmlearn.app.evaluate as ev
    from cmlearn.app.build import build_source
    from cmlearn.app.cli import main
    from cmlearn.app.runs import MODEL, load_run
    from cmlearn.app.runtime import Runtime

    run = tmp_path / "run"
    fast = ["--set", "model.hidden=8,8", "--set", "train.val_tasks=5", "--set", "train.val_every=5"]
    assert main(["train", "--preset", "sinusoid-5shot-cpu", "--steps", "5", "--out", str(run),
                 "--colearner", "cml", "--quiet", *fast]) == 0  # fmt: skip
    cfg, learner = load_run(run)
    source = build_source(cfg, Runtime())
    plain = ev.scores  # the uncached scorer, counted from here on
    calls = []
    monkeypatch.setattr(ev, "scores", lambda *a: calls.append(a) or plain(*a))

    def scored(seed: int = 7, mode: str = "cml", learner=learner) -> np.ndarray:
        tasks = fixed_tasks(source, 12, seed, "test")
        return ev.run_scores(run, cfg, learner, tasks, "mse", mode, 0, 4)

    first = scored()
    assert len(calls) == 1 and len(list((run / ev.SCORES).glob("*.npy"))) == 1
    assert np.array_equal(scored(), first) and len(calls) == 1  # read back, not rescored
    assert np.array_equal(first, plain(learner, fixed_tasks(source, 12, 7, "test"), "mse",
                                       "cml", 0, 4))  # fmt: skip
    scored(seed=8)  # other tasks
    scored(mode="cml-dagger")  # another evaluation mode
    assert len(calls) == 3
    # a new model.pt (a training still running) does not change what the loaded learner
    # scores: its key is the learner's tensors, not the file
    state = torch.load(run / MODEL, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] + 1.0
    torch.save(state, run / MODEL)
    assert np.array_equal(scored(), first) and len(calls) == 3
    _, changed = load_run(run)  # and the new model, once loaded, misses
    new = scored(learner=changed)
    assert not np.array_equal(new, first) and len(calls) == 4
    # a damaged entry (truncated, empty, or another dtype) is scored again and replaced
    for damage in (lambda b: b[:20], lambda b: b"", lambda b: b.replace(b"<f8", b"<f4")):
        for entry in (run / ev.SCORES).glob("*.npy"):
            entry.write_bytes(damage(entry.read_bytes()))
        before = len(calls)
        assert np.array_equal(scored(learner=changed), new) and len(calls) == before + 1
    # a folder that cannot be written still gets its scores
    monkeypatch.setattr(ev, "atomic_path", lambda _: (_ for _ in ()).throw(OSError("ro")))
    assert scored(seed=9).shape == (12,) and len(calls) == 8
