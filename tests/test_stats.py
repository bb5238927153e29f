"""Seed-level intervals and the hierarchical bootstrap (``cmlearn.app.stats``), checked
against numbers computed here from their definitions."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cmlearn.app.stats import compare_pair, finite, hierarchical_bootstrap, seed_level

# 3 seeds × 4 tasks: the paired differences method − baseline, per seed (rows) and task
DIFF = [
    [0.1, 0.2, 0.3, 0.4],  # seed mean 0.25
    [0.0, 0.0, 0.1, 0.1],  # 0.05
    [0.5, 0.3, 0.4, 0.4],  # 0.40
]
# the baseline's scores: tasks of very different difficulty, and a seed that is better overall
BASE = [
    [0.9, 0.5, 0.2, 0.7],
    [0.8, 0.4, 0.1, 0.6],
    [0.95, 0.55, 0.25, 0.75],
]


def test_seed_and_task_level_intervals_of_a_hand_made_case():
    baseline = np.array(BASE)
    values = baseline + np.array(DIFF)
    result = compare_pair(values, baseline, resamples=2_000)
    deltas = [0.25, 0.05, 0.40]
    seeds = result["seeds"]
    assert seeds["deltas"] == pytest.approx(deltas, abs=1e-12)
    assert seeds["n"] == 3
    assert seeds["mean"] == pytest.approx(sum(deltas) / 3)
    assert seeds["std"] == pytest.approx(statistics.stdev(deltas))
    # 95% t-interval over the 3 seeds: t(0.975, 2 dof) = 4.30, not 1.96
    t2 = scipy_stats.t.ppf(0.975, 2)
    assert t2 == pytest.approx(4.302652729749464)
    assert seeds["ci95"] == pytest.approx(t2 * statistics.stdev(deltas) / math.sqrt(3))
    # over tasks: the seed-averaged difference of each task, t with 3 dof
    per_task = [sum(DIFF[s][t] for s in range(3)) / 3 for t in range(4)]
    tasks = result["tasks"]
    assert tasks["n"] == 4 and tasks["mean"] == pytest.approx(sum(per_task) / 4)
    half = scipy_stats.t.ppf(0.975, 3) * statistics.stdev(per_task) / 2
    assert tasks["ci95"] == pytest.approx(half)
    # both levels estimate the same mean difference; the bootstrap is centred on it
    assert result["bootstrap"]["mean"] == pytest.approx(seeds["mean"])
    assert result["bootstrap"]["low"] < seeds["mean"] < result["bootstrap"]["high"]


def test_bootstrap_with_three_seeds_and_no_task_noise_spans_the_seed_differences():
    """Each seed's tasks all differ by the same amount, so only the seeds vary: of the 27
    equally likely seed draws, one (1/27 = 3.7% > 2.5%) is all of the lowest seed, one all of
    the highest, so the percentile interval is exactly [lowest, highest]."""
    diff = np.repeat(np.array([[0.25], [0.05], [0.40]]), 4, axis=1)
    boot = hierarchical_bootstrap(diff, resamples=10_000, seed=3)
    assert boot["low"] == pytest.approx(0.05) and boot["high"] == pytest.approx(0.40)
    assert boot["resamples"] == 10_000 and boot["seed"] == 3


def test_bootstrap_spread_matches_the_two_level_variance():
    """The bootstrap mean's variance is (var(seed means) + mean within-seed var / T) / S (both
    population variances): the nested resampling of seeds, then tasks, computed by hand."""
    rng = np.random.default_rng(1)
    n_seeds, n_tasks = 20, 50
    diff = rng.normal(0, 0.3, (n_seeds, 1)) + rng.normal(0, 2.0, (n_seeds, n_tasks))
    boot = hierarchical_bootstrap(diff, resamples=10_000, seed=0)
    means = diff.mean(1)
    expected = (means.var() + diff.var(axis=1).mean() / n_tasks) / n_seeds
    assert boot["std"] == pytest.approx(math.sqrt(expected), rel=0.05)
    # and the percentile interval is about ± 1.96 of it
    assert boot["high"] - boot["low"] == pytest.approx(2 * 1.96 * math.sqrt(expected), rel=0.1)


def test_bootstrap_is_seeded():
    diff = np.random.default_rng(2).normal(size=(5, 30))
    a, b = hierarchical_bootstrap(diff, 500, seed=0), hierarchical_bootstrap(diff, 500, seed=0)
    assert a == b
    assert hierarchical_bootstrap(diff, 500, seed=1)["low"] != a["low"]
    with pytest.raises(ValueError):
        hierarchical_bootstrap(np.zeros(5))


def test_one_seed_has_no_seed_interval_and_json_says_null():
    values, baseline = np.array([DIFF[0]]), np.zeros((1, 4))
    result = compare_pair(values, baseline, resamples=100)
    assert result["seeds"]["deltas"] == [pytest.approx(0.25)]
    assert math.isnan(result["seeds"]["ci95"])
    text = json.dumps(finite(result), allow_nan=False)  # would raise on a NaN
    assert json.loads(text)["seeds"]["ci95"] is None
    assert finite([np.float64("inf"), -math.inf, np.int64(3), 1.5]) == [None, None, 3, 1.5]
    with pytest.raises(ValueError):
        seed_level(np.zeros((2, 3)), np.zeros((3, 2)))
