"""Every image preset of the paper's tables runs on CPU: two meta-steps of its +CML run (the
preset's algorithm, model and co-learner: the base method is the same run without ϕ) on tiny
fixture data in each dataset's real format, then scored with CML and CML† through
``cmlearn compare``. Only sizes shrink: task, query and step counts, at most 2 inner steps
(MSL, SAM and per-step BatchNorm still run over several steps), ResNet-12 at widths
8-8-16-16 (its full widths cost minutes per step here; their parameter counts are tested in
test_resnet.py). One MAML and one MAML++ preset also run their base method beside +CML. A
5-shot preset is its 1-shot sibling with ``task.shots=5`` (tested), so one 5-shot preset runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cmlearn.app.compare import compare
from cmlearn.app.config import get_preset
from cmlearn.app.presets import PRESETS, TABLES, describe
from cmlearn.app.presets import images as image_presets
from cmlearn.app.runtime import Runtime
from tests.image_fixtures import write_fixture

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = [
    ("train.steps", 2),
    ("train.val_every", 2),
    ("train.val_tasks", 2),
    ("train.log_every", 1),
    ("task.meta_batch", 1),
    ("task.queries", 1),
    ("task.eval_queries", 1),
    ("eval.tasks", 2),
    ("eval.batch", 2),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Every dataset's fixture, and beside it one cache shared by the module's tests (each
    dataset is decoded once)."""
    root = tmp_path_factory.mktemp("images")
    write_fixture("miniimagenet", root, classes=(5, 5, 5), per_class=6)
    write_fixture("tieredimagenet", root, classes=(5, 5, 5), per_class=6)
    write_fixture("cifarfs", root)  # 4 + 2 images of every CIFAR-100 class
    write_fixture("flower", root, per_class=6)
    write_fixture("cub", root, per_class=6)
    return root


RUN = sorted(n for n in image_presets.PRESETS if "-5w5s-" not in n) + ["mini-5w5s-maml"]


def test_every_5_shot_preset_is_its_1_shot_sibling_with_5_shots():
    five = [n for n in image_presets.PRESETS if "-5w5s-" in n]
    assert len(five) == len(image_presets.PRESETS) - len(RUN) + 1
    for name in five:
        sibling = get_preset(name.replace("-5w5s-", "-5w1s-"))
        expected = sibling.apply([("task.shots", 5)]).to_dict() | {"preset": name}
        assert get_preset(name).to_dict() == expected, name


@pytest.mark.parametrize("name", RUN)
def test_every_image_preset_trains_and_scores_cml_and_dagger_on_cpu(name, data_root, tmp_path):
    cfg = get_preset(name).apply([*SMALL, ("train.threads", 1)])
    if cfg.inner.steps > 2:
        cfg = cfg.apply([("inner.steps", 2), ("eval.steps", 2)])
    if cfg.model.name == "resnet12":
        cfg = cfg.apply([("model.options.widths", [8, 8, 16, 16])])
    if cfg.eval.ensemble:
        cfg = cfg.apply([("eval.ensemble", 2)])
    runtime = Runtime(data_root, data_root / "cache", torch.device("cpu"))
    methods = ["cml"]
    if name in ("mini-5w1s-maml", "mini-5w1s-mamlpp"):
        methods.insert(0, cfg.algorithm)
    report = compare(cfg, methods, [0], tmp_path / "runs", False, runtime)
    rows = {row["method"]: row for row in report["summary"]}
    assert set(rows) == {*methods, "cml†"}, name
    for row in rows.values():
        assert 0.0 <= row["mean"] <= 1.0 and math.isfinite(row["mean"]), name


def test_every_table_row_names_a_preset_and_prints_the_papers_numbers():
    for table in (1, 2, 3, 4, 5, 7, 8, 9):
        listed = describe(table)
        assert listed, table
        for preset, text in listed:
            assert preset in PRESETS
            first = next(iter(TABLES[table][preset].values()))
            assert f"{first:.2f}" in text
    assert TABLES[1]["mini-5w1s-maml"] == {"MAML": 47.44, "+CML": 49.32, "+CML†": 50.35}
    assert TABLES[9]["cifarfs-5w5s-resnet12"] == {"MAML": 73.32, "CML": 78.31}
    assert list(TABLES[3]["amazon-2w5s-ammgnn"].values()) == [80.10, 86.68]  # CML paper Table 3
    assert len(TABLES[3]) == 12  # G-Meta and AMM-GNN on CiteSeer, Amazon-Computer, CoraFull
    assert math.isnan(TABLES[7]["mini-5w1s-same-conv2"]["co-learner"])  # "failed to converge"


def test_presets_state_the_settings_their_rows_depend_on():
    mini = get_preset("mini-5w1s-maml")
    assert (mini.inner.steps, mini.inner.lr, mini.task.meta_batch) == (1, 0.5, 4)
    assert (mini.colearner.gamma, mini.eval.tasks, mini.train.steps) == (1.0, 10_000, 30_000)
    boil = get_preset("mini-5w5s-boil")
    assert (boil.inner.body_scale, boil.inner.head_scale) == (1.0, 0.0)
    pp = get_preset("mini-5w1s-mamlpp")
    assert pp.inner.learn_lr == "layer-step" and pp.model.options.channels == 48
    assert pp.train.grad_clamp == 10.0 and pp.eval.ensemble == 3
    both = get_preset("mini-5w1s-sharp")
    assert both.inner.sam_rho == both.train.sam_rho == 5e-4
    low, up = get_preset("mini-5w1s-sharp-low"), get_preset("mini-5w1s-sharp-up")
    assert (low.inner.sam_rho, low.train.sam_rho, up.inner.sam_rho, up.train.sam_rho) == (
        5e-4,
        0.0,
        0.0,
        5e-4,
    )
    assert get_preset("mini-5w1s-moremaml").model.options.extra == 3
    same = get_preset("mini-5w5s-same-conv2")
    assert same.model.options.head_convs == same.colearner.head.options.layers == 2
    assert get_preset("mini-5w1s-colearner-conv4").colearner.head.options.layers == 4
    assert get_preset("mini-5w5s-gamma0.8").colearner.gamma == 0.8
    res = get_preset("fc100-5w1s-resnet12")
    assert (res.model.name, res.colearner.head.name, res.inner.lr) == ("resnet12", "resnet", 0.3)
