"""Intervals for methods scored on the same test tasks by several training seeds.

A comparison of two methods has two sources of noise: the test tasks (a finite sample of the
task distribution) and the training seed (the same method trained again lands elsewhere). The
task-level interval (``paired`` on the seed-averaged per-task differences) sees only the first,
so with 1,000 tasks it is narrow however much the methods vary from seed to seed. The decision
"does A beat B" is therefore made at the seed level (``seed_level``: one paired difference per
seed, a t-interval over seeds) or with a ``hierarchical_bootstrap`` that resamples both levels.
NumPy only, SciPy for the t quantile.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95  # every interval here is a 95% interval
RESAMPLES = 10_000  # hierarchical bootstrap resamples
BOOTSTRAP_SEED = 0  # the bootstrap's own random stream: the same report every time


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, n − 1 dof)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "ci95": math.nan, "std": math.nan, "n": n}
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "ci95": half, "std": std, "n": n}


def paired(values: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Mean per-task difference ``values − baseline`` on the same tasks, with its 95% CI."""
    if values.shape != baseline.shape:
        raise ValueError("a paired comparison needs scores on the same tasks")
    return summarize(values - baseline)


def seed_level(values: np.ndarray, baseline: np.ndarray) -> dict:
    """Per-seed paired differences of two ``[seeds, tasks]`` score arrays (row ``s`` of each
    from the same seed, on the same tasks) and their mean with a t-interval over seeds.

    Each seed's difference averages out the task noise of that seed, so the spread of the
    differences is what retraining changes; with n seeds the interval has n − 1 degrees of
    freedom (4 for 5 seeds: t = 2.78, not 1.96), which is what makes it honest for few seeds.
    """
    if values.shape != baseline.shape or values.ndim != 2:
        raise ValueError("a seed-level comparison needs [seeds, tasks] scores of the same shape")
    deltas = values.mean(1) - baseline.mean(1)
    return {"deltas": [float(d) for d in deltas], **summarize(deltas)}


def hierarchical_bootstrap(
    diff: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """Percentile 95% interval of the mean of ``diff`` (``[seeds, tasks]`` paired differences)
    under a two-level bootstrap: draw the seeds with replacement, then, for each seed drawn,
    its tasks with replacement (independently per draw), and average.

    It keeps both sources of noise without assuming normal differences. Tasks are resampled
    within each drawn seed (nested), which treats each seed's tasks as its own sample; with
    few seeds the percentile interval is narrower than the t-interval over seeds (it has no
    small-sample correction: with 3 seeds and no task noise it is the range of the seed
    differences), so read it beside ``seed_level``, not instead of it. ``seed`` fixes the
    random stream, so a report is reproducible.
    """
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError("a hierarchical bootstrap needs a non-empty [seeds, tasks] array")
    n_seeds, n_tasks = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // (n_seeds * n_tasks))  # resamples per block: bounded memory
    for start in range(0, resamples, block):
        n = min(block, resamples - start)
        seeds = rng.integers(0, n_seeds, (n, n_seeds))
        tasks = rng.integers(0, n_tasks, (n, n_seeds, n_tasks))
        means[start : start + n] = diff[seeds[:, :, None], tasks].mean((1, 2))
    low, high = np.percentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {
        "mean": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "std": float(means.std(ddof=1)) if resamples > 1 else math.nan,
        "resamples": resamples,
        "seed": seed,
    }


def compare_pair(
    values: np.ndarray,
    baseline: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """``values − baseline`` (``[seeds, tasks]`` each) three ways: over tasks (the seed-averaged
    per-task differences), over seeds (``seed_level``) and by ``hierarchical_bootstrap``."""
    return {
        "tasks": paired(values.mean(0), baseline.mean(0)),
        "seeds": seed_level(values, baseline),
        "bootstrap": hierarchical_bootstrap(values - baseline, resamples, seed),
    }


def finite(obj: object) -> object:
    """``obj`` with every non-finite float (NaN, ±inf) as ``None``, for standard JSON
    (``json.dumps(..., allow_nan=False)``): a missing interval is ``null``, never ``NaN``."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
