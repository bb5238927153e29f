"""Few-shot node classification (CML paper §4.3, Table 3; Tan et al., LoG 2022, TLP-FSNC).

``<dataset>-<N>w<K>s-<method>`` runs the TLP-FSNC episode protocol with the hyper-parameters
of TLP's code (github.com/Zhen-Tan-dmml/TLP-FSNC, ``Meta-learning/G-Meta/train_G-Meta.py``,
``Meta-learning/AMM-GNN/train_AMM.py``), which produced the baselines the CML paper copies:

- ``gmeta``: Adam 0.005, weight decay 5e-4, 20 first-order inner steps of 0.05, at most
  1,000 episodes.
- ``ammgnn``: Adam 0.01, weight decay 5e-4, 20 first-order inner steps of 0.1 (0.05 on
  Amazon-Computer, as the code's comment says), at most 500 episodes; two context sets of 10
  task nodes.
- ``gcn`` (TLP's "Meta-GNN", MAML over the full-graph GCN): Adam 0.005, weight decay 5e-4, 5
  inner steps of 0.05, at most 500 episodes, patience 20.

Common to all: one task per episode, 5 query nodes per class in training and 10 in
validation and test (TLP validates on 5: ``task.val_queries=5``), validation every 10
episodes, early stop after 10 validations without a strict improvement (TLP), the
best-validation model scored on 500 fixed test tasks; GCN hidden 16,
dropout 0.5 in the inner loop only, TLP's U(±1/√fan_out) initialisation; the co-learner is
16 → 16 → N with γ = 0.2. The validation tasks are 20 fixed tasks (TLP draws 20 fresh ones
each time; ``--set eval.protocol=tlp`` does that, see docs/graphs.md).

``-paper`` swaps in the CML paper's text (= TLP's paper text): Adam 1e-3, weight decay 1e-4,
20 inner steps of 0.05.
"""

from __future__ import annotations

DATASETS = {  # preset prefix -> data name, ways run
    "citeseer": ("citeseer", (2,)),
    "cora": ("cora", (2,)),
    "amazon": ("amazon-computer", (2,)),
    "coauthor": ("coauthor-cs", (2, 5)),
    "corafull": ("corafull", (2, 5)),
}
METHODS = {  # method -> (meta_lr, inner steps, inner lr, episodes, patience)
    "gmeta": (0.005, 20, 0.05, 1000, 10),
    "ammgnn": (0.01, 20, 0.1, 500, 10),
    "gcn": (0.005, 5, 0.05, 500, 20),
}
# CML Table 3 (accuracy %, 5 runs): (base, +CML) per column; the baselines are TLP's.
TABLE3 = {
    "citeseer-2w1s-gmeta": (55.15, 61.17),
    "citeseer-2w5s-gmeta": (64.53, 76.07),
    "amazon-2w1s-gmeta": (70.57, 72.26),
    "amazon-2w5s-gmeta": (85.96, 87.10),
    "corafull-5w1s-gmeta": (60.44, 60.49),
    "corafull-5w5s-gmeta": (75.84, 76.02),
    "citeseer-2w1s-ammgnn": (54.53, 61.13),
    "citeseer-2w5s-ammgnn": (62.93, 66.88),
    "amazon-2w1s-ammgnn": (74.29, 78.91),
    "amazon-2w5s-ammgnn": (80.10, 86.68),
    "corafull-5w1s-ammgnn": (58.77, 63.27),
    "corafull-5w5s-ammgnn": (75.61, 76.19),
}


def _graph(data: str, ways: int, shots: int, method: str, paper: bool) -> dict:
    meta_lr, steps, lr, episodes, patience = METHODS[method]
    if method == "ammgnn" and data == "amazon-computer":
        lr = 0.05
    decay = 5e-4
    if paper:
        meta_lr, steps, lr, decay = 1e-3, 20, 0.05, 1e-4
    return {
        "algorithm": "fomaml",  # TLP's inner loop takes gradients without a graph
        "data": {"name": data},
        "task": {
            "ways": ways,
            "shots": shots,
            "queries": 5,
            "eval_queries": 10,
            "meta_batch": 1,
            "context": 10 if method == "ammgnn" else 0,
        },
        "model": {"name": method},
        "inner": {"steps": steps, "lr": lr, "first_order": True},  # what fomaml sets
        "colearner": {"gamma": 0.2, "head": {"name": "mlp", "options": {"hidden": [16]}}},
        "train": {
            "steps": episodes,
            "meta_lr": meta_lr,
            "weight_decay": decay,
            "patience": patience,
            "val_every": 10,
            "val_tasks": 20,
            "log_every": 10,
            "strategy": "loop",
            "threads": 1,
        },
        "eval": {"tasks": 500, "seed": 1234, "batch": 1},
    }


PRESETS: dict[str, tuple[str, dict]] = {}
for _prefix, (_data, _ways) in DATASETS.items():
    for _n in _ways:
        for _k in (1, 5):
            for _method in METHODS:
                _name = f"{_prefix}-{_n}w{_k}s-{_method}"
                _paper = TABLE3.get(_name)
                _note = f" (CML Table 3: {_paper[0]:.2f} / +CML {_paper[1]:.2f})" if _paper else ""
                PRESETS[_name] = (
                    f"{_data} {_n}-way {_k}-shot, {_method}, TLP code's settings{_note}",
                    _graph(_data, _n, _k, _method, paper=False),
                )
                PRESETS[f"{_name}-paper"] = (
                    f"{_data} {_n}-way {_k}-shot, {_method}, the CML paper's stated settings",
                    _graph(_data, _n, _k, _method, paper=True),
                )
