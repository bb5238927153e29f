"""Confidence intervals, paired differences and the shared test tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmlearn.evaluate import batches, fixed_tasks, paired, summarize
from cmlearn.tasks import SinusoidSource


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
    import cmlearn.evaluate

    monkeypatch.setattr(cmlearn.evaluate, "CHUNK", 8)  # several chunks
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
