"""Few-shot sinusoid regression (paper §4.1, Fig. 2).

Paper settings: K ∈ {5, 10, 20}, meta-batch 4, one inner step of α = 0.01, γ = 0.2, MLP
1 → 40 → 40 → 1 with a co-learner of one hidden layer of 40 on the second hidden layer's
features. The paper leaves the rest open; our choices (following Finn et al. 2017 where it
gives them) are: Adam with β = 1e-3, 70,000 meta-iterations, 10 query points per training
task, validation on 200 fixed tasks every 1,000 iterations, and a test of 2,000 tasks with
100 query points each after one adaptation step, as in the paper's Fig. 2.

The ``-cpu`` variants keep every setting but train for 20,000 iterations (about 45 s on one
core; the presets train on one thread, which `cmlearn bench` measured faster for this MLP).
"""

from __future__ import annotations


def _sinusoid(shots: int, cpu: bool) -> dict:
    return {
        "data": {"name": "sinusoid"},
        "task": {
            "shots": shots,
            "queries": 10,
            "eval_queries": 100,
            "meta_batch": 4,
        },
        "model": {"name": "mlp", "options": {"hidden": [40, 40]}},
        "inner": {"steps": 1, "lr": 0.01},
        "colearner": {"gamma": 0.2, "head": {"name": "mlp", "options": {"hidden": [40]}}},
        "train": {
            "steps": 20_000 if cpu else 70_000,
            "meta_lr": 1e-3,
            "val_every": 1_000,
            "val_tasks": 200,
            "threads": 1,  # measured: a second thread slows this MLP (cmlearn bench)
        },
        "eval": {"tasks": 2_000, "seed": 1234},
    }


PRESETS: dict[str, tuple[str, dict]] = {}
for _k in (5, 10, 20):
    PRESETS[f"sinusoid-{_k}shot"] = (
        f"sinusoid regression, K={_k}, paper settings, 70k meta-iterations",
        _sinusoid(_k, False),
    )
    PRESETS[f"sinusoid-{_k}shot-cpu"] = (
        f"sinusoid regression, K={_k}, 20k meta-iterations (about 45 s on one core)",
        _sinusoid(_k, True),
    )
