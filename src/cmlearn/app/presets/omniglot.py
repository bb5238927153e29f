"""Few-shot Omniglot classification with Conv-4 (CML paper §4.2, Table 2; Finn et al. 2017).

All presets use the Vinyals split with rotated characters as new classes (4112 / 688 / 1692
classes; ``--set data.split=finn`` gives Finn's 1100 / 100 / 423 with per-task rotation),
28×28 Lanczos greyscale, the Conv-4 of the paper (64 channels, transductive BatchNorm, last
pool in the head) and the paper's Conv(2)+FC co-learner on the pre-pool 3×3 map.

- ``omniglot-{5,20}w{1,5}s``: Finn et al.'s hyper-parameters: 5-way one inner step of
  α = 0.4 and meta-batch 32; 20-way five steps of α = 0.1 and meta-batch 16; Adam 1e-3,
  60,000 iterations, K query examples per class in training (Finn's code), 10 inner steps at
  validation and test (Finn's code), 1,000 test tasks with 15 queries per class.
- ``omniglot-5w{1,5}s-paper``: the CML image code's settings (JJongyn/CML ``run_cml.sh``;
  the paper's App. A.1): one inner step
  of α = 0.5 at training and test, meta-batch 4, 15 queries per class, 30,000 iterations,
  validation on 100 tasks every 100 iterations, γ = 1.
- ``-cpu``: the same method sized for about 45 minutes on one core (see ``CPU`` below).
- ``omniglot-5w1s-32px-cpu``: ``omniglot-5w1s-cpu`` with 32×32 images. At 28 px Conv-4's last
  map is 3×3 and the head's 2×2 max-pool reads only its top-left 2×2, so the meta-learner's
  loss sends no gradient to 5 of the 9 positions while a co-learner's does; at 32 px the map
  is 4×4 and nothing is dropped. The control for what a co-learner's gradient does there.

γ = 1 everywhere: the paper's image experiments (App. A.1, the official ``run_cml.sh``, and
Table 5's γ = 1 row, which equals Table 1's MAML + CML row) use it; §4.2's "0.5" contradicts
the rest and is not what produced Table 1.
"""

from __future__ import annotations

FINN = {  # (ways, shots) -> inner steps, α, meta-batch
    (5, 1): (1, 0.4, 32),
    (5, 5): (1, 0.4, 32),
    (20, 1): (5, 0.1, 16),
    (20, 5): (5, 0.1, 16),
}
# -cpu: meta-batch 8, 5 query examples per class, one thread; the iteration count is what one
# core does in about 45 minutes. Measured CPU time per step (process time, one thread, our
# 2-core machine, MAML / CML): 5w1s 0.89 / 1.00 s, 5w5s 2.47 / 2.36 s, 20w1s 8.8 / 8.1 s,
# 20w5s 41 s. Second-order 20-way training does not fit 45 minutes of one core: the 20-way
# -cpu presets are short smoke-scale runs, not converged models.
CPU = {  # (ways, shots) -> meta-iterations
    (5, 1): 3_000,
    (5, 5): 1_100,
    (20, 1): 320,
    (20, 5): 65,
}


def _omniglot(
    ways: int,
    shots: int,
    inner: tuple[int, float],
    meta_batch: int,
    queries: int,
    steps: int,
    eval_steps: int,
    val_every: int,
    val_tasks: int,
    threads: int = 0,
    size: int = 28,
) -> dict:
    options: dict = {"split": "vinyals"} | ({"image_size": size} if size != 28 else {})
    return {
        "data": {"name": "omniglot", "options": options},
        "task": {
            "ways": ways,
            "shots": shots,
            "queries": queries,
            "eval_queries": 15,
            "meta_batch": meta_batch,
        },
        "model": {"name": "conv4", "options": {"channels": 64, "bn": "transductive"}},
        "inner": {"steps": inner[0], "lr": inner[1]},
        "colearner": {"gamma": 1.0, "head": {"name": "conv", "options": {"layers": 2}}},
        "train": {
            "steps": steps,
            "meta_lr": 1e-3,
            "val_every": val_every,
            "val_tasks": val_tasks,
            "log_every": 50,
            "threads": threads,
        },
        "eval": {"tasks": 1000, "steps": eval_steps, "seed": 1234, "batch": 25},
    }


PRESETS: dict[str, tuple[str, dict]] = {}
for (_n, _k), (_steps, _lr, _mb) in FINN.items():
    PRESETS[f"omniglot-{_n}w{_k}s"] = (
        f"Omniglot {_n}-way {_k}-shot, Conv-4, Finn et al.'s settings, 60k iterations",
        _omniglot(_n, _k, (_steps, _lr), _mb, _k, 60_000, 10, 1_000, 200),
    )
    PRESETS[f"omniglot-{_n}w{_k}s-cpu"] = (
        f"Omniglot {_n}-way {_k}-shot, meta-batch 8, {CPU[_n, _k]:,} iterations "
        "(about 45 min on one core)",
        _omniglot(
            _n, _k, (_steps, _lr), 8, 5, CPU[_n, _k], _steps, max(CPU[_n, _k] // 12, 5), 100, 1
        ),
    )
PRESETS["omniglot-5w1s-32px-cpu"] = (
    "Omniglot 5-way 1-shot at 32×32 px, otherwise omniglot-5w1s-cpu (the head reads the whole "
    "4×4 map)",
    _omniglot(5, 1, (1, 0.4), 8, 5, CPU[5, 1], 1, CPU[5, 1] // 12, 100, 1, size=32),
)
for _k in (1, 5):
    PRESETS[f"omniglot-5w{_k}s-paper"] = (
        f"Omniglot 5-way {_k}-shot, the CML image code's settings (Table 2), 30k iterations",
        _omniglot(5, _k, (1, 0.5), 4, 15, 30_000, 1, 100, 100),
    )
