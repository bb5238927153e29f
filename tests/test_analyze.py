"""``cmlearn analyze``: linear CKA against known values, the evaluation's own adaptation, and
the whole command on a tiny run (figures, JSON, clean failures)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from cmlearn import CmlearnError
from cmlearn.app.analysis import linear_cka
from cmlearn.app.analysis.records import (
    colearner_series,
    expand_runs,
    gradient_series,
    read_metrics,
)
from cmlearn.app.analysis.representations import task_activations
from cmlearn.app.cli import main
from cmlearn.app.config import Config
from cmlearn.app.train import train
from tests.conftest import make_learner, needs_omniglot, sinusoid_batch

FIGURES = (
    "fig3a_validation.png",
    "fig3b_cosine.png",
    "fig3c_grad_norms.png",
    "fig3d_cka.png",
    "tsne.png",
    "colearner.png",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Keep to one core: other work shares the machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_cka_of_identical_features_is_one():
    x = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("n", "p"), [(40, 5), (6, 30)])  # feature and example Gram forms
def test_cka_is_invariant_to_rotation_scale_and_shift(n, p):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-12)


def test_cka_hand_computed_cases():
    # One feature each: CKA is the squared correlation; centred x = (-1, 0, 1), y = (0, -1, 1).
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)
    # Keep one of two isotropic directions: ‖YᵀX‖² = 4, ‖XᵀX‖ = 2√2, ‖YᵀY‖ = 2 → 1/√2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert math.isnan(linear_cka(x, torch.ones(4, 3)))  # a constant representation


def test_both_gram_forms_agree():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 4, generator=gen), torch.randn(12, 3, generator=gen)
    wide = torch.cat([x, torch.zeros(12, 30)], 1)  # same CKA, example-Gram branch
    assert linear_cka(wide, y) == pytest.approx(linear_cka(x, y), abs=1e-10)


def test_adapted_activations_are_the_evaluation_ones():
    """The head output seen after adaptation is exactly what ``Learner.evaluate`` predicts,
    and before adaptation it is the meta-learned model's output."""
    learner = make_learner(mode="cml", steps=2, lr=0.1)
    task = sinusoid_batch(n_tasks=2)[1:2]
    before, after, scores = task_activations(learner, task, 2)
    expected = learner.evaluate(task, "cml", 2, return_outputs=True)
    torch.testing.assert_close(after["head"], expected["output"][0])
    assert scores["loss"] == pytest.approx(expected["loss"][0].item())
    with torch.no_grad():
        (plain,) = learner.net(task.query_x[0])
    torch.testing.assert_close(before["head"], plain)
    assert list(before) == ["fc1", "relu1", "fc2", "relu2", "head"]


def test_metrics_records_tolerate_a_half_written_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "val_mse": 2.0}\n{"step": 2, "va')
    assert read_metrics(tmp_path) == [{"step": 1, "val_mse": 2.0}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(CmlearnError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
    assert "skipped" in gradient_series([{"step": 1, "train_loss": 0.5}])


def test_a_compare_folder_expands_to_its_runs(tmp_path):
    for name, mode in (("maml-s0", "none"), ("cml-s0", "cml")):
        config = Config().apply([("colearner.mode", mode)]).to_dict()
        _write(tmp_path / "cmp" / name, "config.json", json.dumps(config))
    (tmp_path / "cmp" / "analysis").mkdir()  # an earlier output folder is not a run
    runs = expand_runs([tmp_path / "cmp", tmp_path / "cmp" / "cml-s0"])
    assert [r.label for r in runs] == ["maml+cml s0", "maml+none s0"]


def test_missing_scikit_learn_is_one_clear_error(monkeypatch, tmp_path):
    from cmlearn.app.analysis.report import analyze

    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(CmlearnError, match="scikit-learn"):
        analyze([tmp_path])


def test_analyze_end_to_end(tiny_cfg, tmp_path, capsys):
    run, out = tmp_path / "cml", tmp_path / "figures"
    cfg = tiny_cfg.override(
        ["colearner.mode=cml", "train.analysis_every=10", "task.eval_queries=30"]
    )
    train(cfg, run, progress=False)
    assert main(["analyze", str(run), "--out", str(out), "--tasks", "5"]) == 0
    assert "CKA" in capsys.readouterr().out
    for name in FIGURES:
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "analysis.json").read_text())
    (result,) = report["runs"]
    assert result["label"] == "maml+cml s0"
    assert result["validation"]["metric"] == "val_mse"
    assert result["validation"]["steps"] == [20, 40]
    grads = result["gradients"]
    assert grads["records"] == 4 and set(grads["layers"]) == {"fc1", "fc2"}
    for series in grads["layers"].values():
        assert series["steps"] == [0, 10, 20, 30]
        assert all(-1.0 <= c <= 1.0 for c in series["cosine"])
        assert all(v >= 0 for v in series["meta_norm"] + series["co_norm"])
    cka = result["cka"]
    assert cka["tasks"] == 5 and cka["layers"] == ["fc1", "relu1", "fc2", "relu2", "head"]
    for layer in cka["layers"]:
        assert 0.0 <= cka["mean"][layer] <= 1.0
        assert len(cka["per_task"][layer]) == 5
        assert all(0.0 <= v <= 1.0 for v in cka["per_task"][layer])
    tsne = result["tsne"]["tasks"]
    assert len(tsne) == 3 and len(tsne[0]["points"]) == cfg.task.eval_queries


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nothing", "no such directory"),
        (lambda d: d, "neither a run folder nor a compare folder"),
        (lambda d: _write(d, "config.json", "{not json"), "corrupt"),
        (lambda d: _write(d, "config.json", "{}", "metrics.jsonl", "[1]\n"), "integer 'step'"),
    ],
)
def test_bad_input_is_one_line(make, message, tmp_path, capsys):
    path = make(tmp_path)
    assert main(["analyze", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _write(folder, *pairs: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(pairs[::2], pairs[1::2], strict=True):
        (folder / name).write_text(text)
    return folder


# --- figures that say what they show (issue 21, §4) ------------------------------------------


def test_runs_without_gradient_records_draw_no_placeholder(tiny_cfg, tmp_path, capsys):
    run, out = tmp_path / "maml", tmp_path / "figures"
    train(tiny_cfg, run, progress=False)  # no co-learner, train.analysis_every=0
    out.mkdir()
    (out / "fig3b_cosine.png").write_bytes(b"stale")  # from an earlier analysis
    assert main(["analyze", str(run), "--out", str(out), "--tasks", "5"]) == 0
    text = capsys.readouterr().out
    for name in ("fig3b_cosine.png", "fig3c_grad_norms.png"):
        assert not (out / name).exists(), name
        assert f"not drawn: {name} (no gradient records" in text
    assert (out / "fig3a_validation.png").exists() and (out / "fig3d_cka.png").exists()
    report = json.loads((out / "analysis.json").read_text())
    assert "fig3b" not in report["figures"] and "fig3b_cosine.png" in report["skipped_figures"]


def test_a_one_layer_cosine_figure_is_as_wide_as_the_others(tmp_path):
    from PIL import Image

    from cmlearn.app.analysis import figures

    series = {"steps": [0, 10], "cosine": [0.1, 0.2], "meta_norm": [1, 1], "co_norm": [1, 1]}
    runs = [{"label": "cml", "gradients": {"layers": {"fc1": series}}}]
    path = figures.cosine_figure(runs, tmp_path / "c.png")
    assert Image.open(path).size[0] >= 720  # 432 px clipped the title


def test_learning_curve_ticks_do_not_collide_and_the_log_axis_is_labelled(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from cmlearn.app import plots

    run = tmp_path / "r"
    run.mkdir()
    records = [{"step": s, "train_loss": 3.0 - s / 10000} for s in range(10000, 17501, 500)]
    records += [{"step": s, "val_mse": 2.0 - s / 20000} for s in range(10000, 17501, 2500)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    plots.learning_curves({"maml": run}, tmp_path / "lc.png")
    (fig,) = kept
    fig.canvas.draw()
    for ax in fig.axes:
        xs = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        ys = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert 3 <= len(xs) <= 7 and all(x.endswith("k") for x in xs), xs
        assert len(ys) >= 3, ys  # 1.5-3 on a log axis showed only "2×10⁰"
    plt.close(fig)


def test_position_shares_see_what_the_meta_head_never_reads() -> None:
    """At 28 px the meta head's 2×2 pool reads the top-left 2×2 of the 3×3 map: the meta-term's
    share there is exactly 1 and the other five positions get nothing; a Conv(2)+FC co-learner
    reads all nine. At 32 px (a 4×4 map) every position gets meta gradient."""
    from cmlearn.app.analysis.positions import position_shares
    from cmlearn.core.algorithms import InnerRule
    from cmlearn.core.cml import CoLearnerSpec
    from cmlearn.core.engine import Learner
    from cmlearn.core.models import ConvNet, Cooperative, build_colearner
    from cmlearn.core.tasks import TaskBatch

    def batch(size: int) -> TaskBatch:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 10, 1, size, size, generator=g)
        y = torch.arange(5).repeat(2).expand(2, 10)  # 1 shot, 1 query per class
        return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])

    for size, side in ((28, 3), (32, 4)):
        torch.manual_seed(0)
        model = ConvNet(1, 5, size, channels=8)
        net = Cooperative(model, build_colearner((8, side, side), 5))
        rule, spec = InnerRule(steps=1, lr=0.4), CoLearnerSpec("cml", 1.0)
        learner = Learner.create(net, rule, spec, "ce", "loop")
        found = position_shares(learner, [batch(size)])
        meta, co = torch.tensor(found["meta"]), torch.tensor(found["co"])
        assert found["shape"] == [side, side] and found["tasks"] == 2
        assert meta.sum().item() == pytest.approx(1) and co.sum().item() == pytest.approx(1)
        assert (co > 0).all()
        if side == 3:
            assert meta[:2, :2].sum().item() == pytest.approx(1)
            assert (meta[2, :] == 0).all() and (meta[:, 2] == 0).all()
            unread = co[2, :].sum() + co[:2, 2].sum()
            assert found["co_share_where_meta_is_zero"] == pytest.approx(unread.item())
            assert 0 < found["co_share_where_meta_is_zero"] < 1
        else:
            assert (meta > 0).all() and found["co_share_where_meta_is_zero"] == 0


@needs_omniglot
def test_analyze_an_omniglot_run_says_where_each_term_enters_the_3x3_map(tmp_path):
    """End to end on the real preset (two steps): at 28 px the meta head reads the top-left
    2×2 of conv4's 3×3 map, the Conv(2)+FC co-learner all nine positions."""
    run = tmp_path / "cml"
    small = ["--set", "train.val_tasks=2", "--set", "task.meta_batch=2"]
    assert main(["train", "--preset", "omniglot-5w1s-cpu", "--colearner", "cml", "--steps", "2",
                 "--out", str(run), "--quiet", *small]) == 0  # fmt: skip
    assert main(["analyze", str(run), "--tasks", "2", "--out", str(tmp_path / "an")]) == 0
    found = json.loads((tmp_path / "an" / "analysis.json").read_text())["runs"][0]["positions"]
    meta, co = torch.tensor(found["meta"]), torch.tensor(found["co"])
    assert found["shape"] == [3, 3] and found["tasks"] == 64
    assert meta[:2, :2].sum().item() == pytest.approx(1) and (meta[2] == 0).all()
    assert (co > 0).all() and 0 < found["co_share_where_meta_is_zero"] < 1


# --- the co-learner over training and per method (issue 19) -----------------------------------


def _grads(meta: dict[str, float], co: dict[str, float | None]) -> dict:
    return {k: {"meta_norm": meta[k], "co_norm": co[k], "cosine": 0.0} for k in meta}


def test_colearner_series_shares_by_hand():
    records = [
        {"step": 0, "gradients": _grads({"a": 3.0, "b": 4.0}, {"a": 1.0, "b": 0.0})},
        {"step": 10, "train_loss": 1.0, "train_co_loss": 2.0},
        {"step": 10, "gradients": _grads({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 1.0})},
        {"step": 20, "train_loss": 1.0, "train_co_loss": 0.5},
    ]
    found = colearner_series(records, gradient_series(records))
    assert found["co_loss"] == {"steps": [10, 20], "values": [2.0, 0.5]}
    assert found["co_loss_last_tenth"] == 0.5  # the last record of two
    assert found["share"]["a"]["values"] == [0.25, 0.5]
    assert found["share"]["b"]["values"] == [0.0, 1.0]
    # the body: norms over both layers, |meta| = 5 then 1, |co| = 1 then √2
    body = found["share"]["body"]["values"]
    assert body == pytest.approx([1 / 6, math.sqrt(2) / (1 + math.sqrt(2))], abs=1e-12)
    assert found["share_mean"]["a"] == pytest.approx(0.375)
    maml = [{"step": 0, "gradients": _grads({"a": 3.0}, {"a": None})}]  # meta norms only
    assert "skipped" in colearner_series(maml, gradient_series(maml))


def test_methods_summarise_each_method_over_its_seeds():
    from scipy import stats

    from cmlearn.app.analysis.report import methods

    def run(mode: str, seed: int, loss: float, unread: float | None) -> dict:
        co = {"co_loss_last_tenth": loss, "share_mean": {"body": loss / 10}}
        return {
            "preset": "p",
            "algorithm": "maml",
            "colearner": mode,
            "seed": seed,
            "co_term": co if mode != "none" else {"skipped": "no co-learner"},
            "cka": {"skipped": "--logged-only"},
            "positions": {"co_share_where_meta_is_zero": unread},
        }

    found = methods(
        [
            run("cml", 0, 1.0, 0.1),
            run("cml", 1, 2.0, 0.3),
            run("cml", 2, 4.0, 0.2),
            run("none", 0, 0.0, None),
            run("random", 5, 3.0, 0.4),
        ]
    )
    assert [(m["method"], m["seeds"]) for m in found] == [
        ("maml+cml", [0, 1, 2]),
        ("maml+none", [0]),
        ("maml+random", [5]),
    ]
    loss = found[0]["over_seeds"]["co_loss_last_tenth"]
    values = [1.0, 2.0, 4.0]
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / math.sqrt(3)
    assert loss["mean"] == pytest.approx(7 / 3) and loss["ci95"] == pytest.approx(half)
    assert found[0]["over_seeds"]["co_share_where_meta_is_zero"]["mean"] == pytest.approx(0.2)
    assert found[1]["over_seeds"] == {}  # MAML: nothing of a co-learner
    assert found[2]["over_seeds"]["share_mean.body"]["n"] == 1


def test_logged_only_reads_the_logs_and_loads_no_model(tiny_cfg, tmp_path, capsys, monkeypatch):
    from cmlearn.app.analysis import report

    runs = []
    for mode in ("cml", "random"):
        runs.append(tmp_path / mode)
        cfg = tiny_cfg.override([f"colearner.mode={mode}", "train.analysis_every=10"])
        train(cfg, runs[-1], progress=False)
    monkeypatch.setattr(report, "load_run", None)  # would fail if called
    out = tmp_path / "out"
    assert main(["analyze", *map(str, runs), "--out", str(out), "--logged-only"]) == 0
    text = capsys.readouterr().out
    assert "maml+cml (seeds 0): late L^c" in text and "maml+random (seeds 0)" in text
    assert (out / "colearner.png").stat().st_size > 0
    assert not (out / "fig3d_cka.png").exists()
    found = json.loads((out / "analysis.json").read_text())
    assert [r["cka"] for r in found["runs"]] == [{"skipped": "--logged-only"}] * 2
    assert all(r["co_term"]["co_loss"]["steps"] for r in found["runs"])
