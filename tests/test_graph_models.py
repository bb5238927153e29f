"""Graph methods (G-Meta, AMM-GNN as TLP-FSNC ran them): the cheap reformulations against the dense
computation, AMM-GNN's modulation, CML on graphs, early stopping, and a real-data smoke run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import Tensor

import cmlearn.app.train as training
from cmlearn import CmlearnError, Interrupted
from cmlearn.app.build import build_learner
from cmlearn.app.cli import main
from cmlearn.app.config import Config, get_preset
from cmlearn.app.data.graphs import Graph, NodeDataset, class_split, process
from cmlearn.app.train import make_optimizer, outer_step, train
from cmlearn.core.models.graph import DENSE_FROM
from cmlearn.core.tasks import NodeTaskSource, generator

pytestmark = pytest.mark.usefixtures("one_thread")


def random_graph(
    n: int = 90, classes: int = 6, features: int = 12, seed: int = 0, density: float = 0.3
) -> Graph:
    """A random graph with hubs (2-hop balls of very different sizes) and binary features."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, features)) < density).astype(np.float32)
    labels = np.arange(n) % classes
    weight = rng.pareto(1.5, n) + 1  # hubs
    rows = rng.integers(0, n, 3 * n)
    cols = rng.choice(n, 3 * n, p=weight / weight.sum())
    rows, cols = np.append(rows, n - 1), np.append(cols, n - 1)  # node n-1: a self-loop only
    keep = (rows != n - 1) & (cols != n - 1) | (rows == cols)
    return Graph(**process(sp.csr_matrix(x), labels, rows[keep], cols[keep]))


def source(context: int = 0, graph: Graph | None = None) -> NodeTaskSource:
    graph = graph or random_graph()
    dataset = NodeDataset.create("toy", graph, class_split(graph.n_classes, (2, 2, 2)))
    return NodeTaskSource(dataset, 2, 2, 3, 4, context=context)


def config(model: str, mode: str = "none", **extra) -> Config:
    sets = [
        ("algorithm", "fomaml"),
        ("model.name", model),
        ("colearner.mode", mode),
        ("colearner.head.options.hidden", [16]),
        ("inner.steps", 3),
        ("inner.lr", 0.1),
        ("train.strategy", "loop"),
        ("task.context", 4 if model == "ammgnn" else 0),
    ]
    if model == "ammgnn":
        sets.append(("model.options.subset", 4))
    return Config().apply(sets + list(extra.items()))


def dense_embedding(graph: Graph, encoder, nodes: Tensor, readout: str, scale=None):
    """TLP-FSNC's GCN (G-Meta, AMM-GNN) the obvious way: dense Â, every node, every subgraph."""
    a = graph.adjacency.to_dense().double()
    x = graph.features.to_dense().double()
    if scale is not None:
        x = x * scale
    w1, b1 = encoder.lin1.weight.double(), encoder.lin1.bias.double()
    w2, b2 = encoder.lin2.weight.double(), encoder.lin2.bias.double()

    def gcn(adj: Tensor, feats: Tensor) -> Tensor:
        return adj @ torch.relu(adj @ feats @ w1.T + b1) @ w2.T + b2

    if readout == "node":
        return gcn(a, x)[nodes]
    reach = ((a > 0).double() @ (a > 0).double()) > 0  # row v: v's 2-hop ball
    out = []
    for v in nodes.tolist():
        ball = reach[v].nonzero().squeeze(1)
        out.append(gcn(a[ball][:, ball], x[ball]).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("model", ["gcn", "gmeta", "ammgnn"])
def test_graph_models_refuse_vmap_and_batched_in_one_line(model: str) -> None:
    """Their forward picks operators by node id on the host, which vmap cannot trace."""
    from cmlearn import CmlearnError
    from cmlearn.core.engine import resolve_strategy

    net = build_learner(config(model), source(context=4 if model == "ammgnn" else 0)).net
    for strategy, message in (("vmap", "cannot run GraphModel.*use loop"), ("batched", "per-task")):
        with pytest.raises(CmlearnError, match=message):
            resolve_strategy(strategy, net)
    assert resolve_strategy("auto", net) == "loop"


@pytest.mark.parametrize("density", [0.3, 0.04])  # dense rows Z, and sparse ones
@pytest.mark.parametrize("model, readout", [("gcn", "node"), ("gmeta", "subgraph")])
def test_embedding_equals_the_dense_gcn(model: str, readout: str, density: float) -> None:
    src = source(graph=random_graph(features=40, density=density))
    learner = build_learner(config(model), src)
    learner.net.eval()
    encoder = learner.net.model.body.gcn
    nodes = torch.arange(src.graph.n_nodes)  # every node, the isolated one included
    got = encoder(nodes).double()
    want = dense_embedding(src.graph, encoder, nodes, readout)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if model == "gmeta":  # raw features: both kinds of Z are exercised (P = ÂX is denser)
        assert isinstance(encoder.plan(nodes).rows, Tensor) == (density > 0.1)
        assert isinstance(encoder.ops.features, np.ndarray) == (density > DENSE_FROM)
        # plans are kept per dtype (and device) of the weights: a moved model gets its own
        encoder.double()
        assert encoder(nodes).dtype == torch.float64 and len(encoder._plans) == 2
        encoder.float()
    # and W1's gradient (through Zᵀ·G when Z is sparse)
    got.sum().backward()
    w1 = encoder.lin1.weight
    grad, w1.grad = w1.grad.clone(), None
    w = w1.detach().double().requires_grad_()
    encoder.lin1.weight = torch.nn.Parameter(w)
    dense_embedding(src.graph, encoder, nodes, readout).sum().backward()
    torch.testing.assert_close(grad.double(), encoder.lin1.weight.grad, rtol=1e-4, atol=1e-5)
    # the balls really differ in size (the test would be weak on a regular graph)
    sizes = [
        encoder.ops.plan(np.array([v]), "subgraph").readout.forward.shape[1] for v in range(90)
    ]
    assert min(sizes) == 1 and max(sizes) > 20


def test_ammgnn_scales_attributes_by_its_task_modulation() -> None:
    src = source(context=4)
    learner = build_learner(config("ammgnn"), src)
    learner.net.eval()
    encoder = learner.net.model.body.gcn
    batch = src.sample(1, generator("val", 0), "val")
    x = batch.query_x[0]
    nodes, context = x[:-8], x[-8:].view(2, 4)
    feats = src.graph.features.to_dense()[context]  # [2, 4, F]
    mod = encoder.modulation
    alpha = torch.einsum("jif,i->jf", feats, mod.alpha.weight[0]) + mod.alpha.bias
    scale = 1 + 0.01 * alpha.mean(0)
    got = encoder(x).double()
    torch.testing.assert_close(got, dense_embedding(src.graph, encoder, nodes, "node", scale))
    # w_α = 0, b_α = 0: the identity, i.e. exactly the plain GCN's output
    with torch.no_grad():
        mod.alpha.weight.zero_()
        mod.alpha.bias.zero_()
    subset, encoder.subset = encoder.subset, 0  # the same weights, no modulation
    plain = encoder(nodes)
    encoder.subset = subset
    torch.testing.assert_close(encoder(x), plain, rtol=0, atol=0)


def test_context_sets_come_from_the_task_and_leave_the_tasks_unchanged() -> None:
    graph = random_graph()
    plain, ctx = source(0, graph), source(4, graph)
    a = plain.sample(5, generator("train", 0, 1))
    b = ctx.sample(5, generator("train", 0, 1))
    assert torch.equal(a.support_x, b.support_x[:, :-8])
    assert torch.equal(a.query_x, b.query_x[:, :-8])
    assert torch.equal(b.support_x[:, -8:], b.query_x[:, -8:])
    for t in range(5):
        task = set(a.support_x[t].tolist()) | set(a.query_x[t].tolist())
        for chosen in b.query_x[t, -8:].view(2, 4).tolist():
            assert set(chosen) <= task and len(set(chosen)) == 4  # without replacement
    with pytest.raises(CmlearnError, match="task.context"):
        source(11, graph)  # 2·(2+3) = 10 nodes in a training task


def test_modulation_maps_are_outer_only_and_beta_learns_from_the_cosine_only() -> None:
    src = source(context=4)
    learner = build_learner(config("ammgnn"), src)
    assert not any("modulation" in k for k in learner.step_sizes)
    assert {k for k in learner.step_sizes} == {
        f"model.{g}.{p}"
        for g in ("body.gcn.lin1", "body.gcn.lin2", "head")
        for p in ("weight", "bias")
    }
    batch = src.sample(1, generator("train", 0, 0))
    loss, terms = learner.meta_objective(batch)
    loss.backward()
    beta = learner.net.model.body.gcn.modulation.beta.weight
    alpha = learner.net.model.body.gcn.modulation.alpha.weight
    assert beta.grad.abs().sum() > 0 and alpha.grad.abs().sum() > 0
    learner.net.zero_grad()
    learner.net.model.penalty_weight = 0.0
    loss, _ = learner.meta_objective(batch)
    loss.backward()
    assert beta.grad is None or beta.grad.abs().sum() == 0
    assert alpha.grad.abs().sum() > 0  # α still reaches the loss through X ⊙ s


def train_steps(cfg: Config, src: NodeTaskSource, steps: int = 4) -> dict[str, Tensor]:
    learner = build_learner(cfg, src)
    opt = make_optimizer(learner, cfg)
    for t in range(steps):
        torch.manual_seed(t)  # the same dropout masks in every run compared
        outer_step(learner, opt, src.sample(1, generator("train", 0, t)), 0.0)
    return {k: v.detach().clone() for k, v in learner.net.model.state_dict().items()}


@pytest.mark.parametrize("model", ["gcn", "gmeta", "ammgnn"])
def test_cml_with_gamma_zero_is_the_base_method_bit_for_bit(model: str) -> None:
    src = source(context=4 if model == "ammgnn" else 0)
    base = train_steps(config(model, "none", **{"train.weight_decay": 5e-4}), src)
    cml = train_steps(
        config(model, "cml", **{"colearner.gamma": 0.0, "train.weight_decay": 5e-4}), src
    )
    assert base.keys() == cml.keys()
    for k in base:
        assert torch.equal(base[k], cml[k]), k
    moved = train_steps(config(model, "cml", **{"colearner.gamma": 0.2}), src)
    assert any(not torch.equal(base[k], moved[k]) for k in base)


@pytest.mark.parametrize("model", ["gmeta", "ammgnn"])
def test_first_order_cml_leaves_the_head_gradient_alone(model: str) -> None:
    """First order: θ's gradient is the same with and without the co-learner term; ϕ's
    gradient scales with γ (the CML paper's §3 analysis under first order)."""
    src = source(context=4 if model == "ammgnn" else 0)
    batch = src.sample(1, generator("train", 0, 3))
    grads = {}
    for gamma in (0.0, 0.2, 0.4):
        learner = build_learner(config(model, "cml", **{"colearner.gamma": gamma}), src)
        learner.net.eval()  # no dropout: the three runs see the same network
        learner.meta_objective(batch)[0].backward()
        grads[gamma] = {
            k: p.grad.clone() for k, p in learner.net.named_parameters() if p.grad is not None
        }
    head = "model.head.weight"
    torch.testing.assert_close(grads[0.2][head], grads[0.0][head], rtol=0, atol=0)
    torch.testing.assert_close(grads[0.4][head], grads[0.0][head], rtol=0, atol=0)
    body = "model.body.gcn.lin2.weight"
    assert not torch.equal(grads[0.2][body], grads[0.0][body])
    co = "colearner.out.weight"
    torch.testing.assert_close(grads[0.4][co], 2 * grads[0.2][co], rtol=1e-5, atol=1e-7)


def test_second_order_meta_gradient_matches_finite_differences(float64) -> None:
    src = source()
    cfg = config("gmeta", "cml", algorithm="maml", **{"model.options.dropout": 0.0})
    learner = build_learner(cfg, src)
    assert learner.net.model.head.weight.dtype == torch.float64
    batch = src.sample(1, generator("train", 0, 5))
    learner.meta_objective(batch)[0].backward()
    for name in ("model.body.gcn.lin1.weight", "model.body.gcn.lin2.bias", "model.head.weight"):
        p = learner.net.get_parameter(name)
        flat = p.data.view(-1)
        for i in (0, flat.numel() // 2):
            old = flat[i].item()
            flat[i] = old + 1e-6
            up = learner.meta_objective(batch)[0].item()
            flat[i] = old - 1e-6
            down = learner.meta_objective(batch)[0].item()
            flat[i] = old
            assert p.grad.view(-1)[i].item() == pytest.approx(
                (up - down) / 2e-6, rel=1e-5, abs=1e-8
            )


@pytest.mark.parametrize("model", ["gcn", "gmeta", "ammgnn"])
def test_inference_model_has_the_base_parameters(model: str) -> None:
    from cmlearn.app.runs import inference_state

    src = source(context=4 if model == "ammgnn" else 0)
    base = build_learner(config(model), src)
    cml = build_learner(config(model, "cml"), src)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(cml.net.model) == count(base.net.model)
    f = src.graph.features.shape[1]
    gcn = (f * 16 + 16) + (16 * 16 + 16) + (16 * 2 + 2)
    maps = 2 * (4 + 1) if model == "ammgnn" else 0  # w_α, b_α, w_β, b_β over 4 context nodes
    assert count(base.net.model) == gcn + maps
    assert count(cml.net.colearner) == (16 * 16 + 16) + (16 * 2 + 2)
    # what is saved for inference: the base method's tensors, name for name and shape for shape
    saved = inference_state(cml, config(model, "cml"), 0)["model"]
    want = base.net.model.state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in want.items()}
    # the graph is input, not state
    assert all("ops" not in k and "plan" not in k for k in base.net.state_dict())


def test_colearner_takes_tlps_initialisation_on_request() -> None:
    """``colearner.head.options.init=tlp``: U(±1/√fan_out), so the 16 → 2 output layer spans
    ±0.71 rather than nn.Linear's ±0.25; the model (ψ, θ) is untouched."""
    src = source()
    default = build_learner(config("gmeta", "cml"), src).net
    tlp = build_learner(config("gmeta", "cml", **{"colearner.head.options.init": "tlp"}), src).net
    out = tlp.colearner.out.weight
    assert out.abs().max() <= 2**-0.5 and out.abs().max() > 0.25  # 32 draws: P(≤0.25) < 1e-14
    assert default.colearner.out.weight.abs().max() <= 0.25
    assert tlp.colearner.fc1.weight.abs().max() <= 0.25  # 16 → 16: the two bounds agree
    theirs = tlp.model.state_dict()
    for k, a in default.model.state_dict().items():
        assert torch.equal(a, theirs[k]), k
    with pytest.raises(CmlearnError, match="colearner.init must be one of torch, tlp"):
        config("gmeta", "cml", **{"colearner.head.options.init": "xavier"})


def test_graph_model_input_checks() -> None:
    with pytest.raises(CmlearnError, match="task.context=4"):
        build_learner(config("ammgnn", **{"task.context": 0}), source(context=0))
    with pytest.raises(CmlearnError, match="task.context=0"):
        build_learner(config("gcn"), source(context=4))


# --- the training loop's pieces the graph presets use -----------------------------------------


def test_early_stopping_stops_and_stays_stopped(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg.override(["train.steps=400", "train.val_every=2", "train.patience=2"])
    summary = train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    vals = [r["val_mse"] for r in records if "val_mse" in r]
    assert summary["stopped_early"] and summary["steps"] < 400
    # stopped exactly when the last two validations failed to beat the best before them
    best_before = min(vals[:-2])
    assert all(v >= best_before for v in vals[-2:]) and min(vals[:-1]) == min(vals[:-2])
    again = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert again["steps"] == summary["steps"]
    from cmlearn.app.runs import RunFolder

    assert 0 < RunFolder(tmp_path / "run").train_seconds() < summary["seconds"] + 1


def test_graph_resume_is_exact(tmp_path: Path, monkeypatch) -> None:
    """Dropout masks come from a per-step seed: a resumed graph run equals an uninterrupted one."""
    src = source()
    monkeypatch.setattr(training, "build_source", lambda cfg, runtime=None: src)
    cfg = config("gmeta", "cml", **{"train.steps": 6, "train.val_every": 3, "train.val_tasks": 2})
    train(cfg, tmp_path / "a", progress=False)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "b", progress=False, should_stop=lambda step: step == 2)
    train(cfg, tmp_path / "b", resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["net"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["net"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- real data -----------------------------------------------------------------------------


needs_citeseer = pytest.mark.skipif(
    not (Path(os.environ["CMLEARN_DATA"]) / "planetoid" / "ind.citeseer.graph").exists(),
    reason="CiteSeer not found under CMLEARN_DATA",
)


@needs_citeseer
@pytest.mark.parametrize("method", ["gmeta", "ammgnn"])
def test_citeseer_preset_trains_and_tests(method: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--preset",
            f"citeseer-2w1s-{method}",
            "--methods",
            "fomaml,cml",
            "--seeds",
            "0",
            "--set",
            "train.steps=20",
            "--set",
            "eval.tasks=20",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "fomaml+cml" in text or "cml" in text
    cfg = json.loads((out / "cml-s0" / "config.json").read_text())
    assert cfg["algorithm"] == "fomaml" and cfg["colearner"]["mode"] == "cml"
    assert get_preset(f"citeseer-2w1s-{method}").train.weight_decay == 5e-4


# --- TLP-FSNC's protocol (eval.protocol=tlp) --------------------------------------------------


def test_tlp_protocol_stores_the_test_at_the_best_validation(tmp_path: Path, monkeypatch) -> None:
    import cmlearn.app.compare as comparing
    import cmlearn.app.runs as runs
    from cmlearn.app.compare import compare
    from cmlearn.app.evaluate import EvalSpec, scores
    from cmlearn.app.runs import RunFolder, load_run

    src = source()
    for module in (training, comparing, runs):
        monkeypatch.setattr(module, "build_source", lambda cfg, runtime=None: src)
    sets = {"train.steps": 20, "train.val_every": 4, "train.val_tasks": 4, "eval.tasks": 6}
    cfg = config("gmeta", **sets, **{"eval.protocol": "tlp", "eval.batch": 1})
    report = compare(cfg, ["fomaml", "cml"], [0, 1], tmp_path, progress=False)
    stored = {}
    for name in ("fomaml", "cml"):
        for seed in (0, 1):
            run = tmp_path / f"{name}-s{seed}"
            record = RunFolder(run).read_tlp_test()
            best = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            vals = [
                json.loads(line)
                for line in (run / "metrics.jsonl").read_text().splitlines()
                if "val_accuracy" in line
            ]
            best_step = max(vals, key=lambda r: r["val_accuracy"])["step"]  # first of ties
            assert record["step"] == best_step, (record["step"], best, vals)
            # the stored scores are the best model's on that step's fresh test tasks
            run_cfg, learner = load_run(run)
            tasks = training.tlp_tasks(src, run_cfg, "test", best_step)
            again = scores(learner, tasks, EvalSpec("accuracy"))
            assert np.allclose(again, record["values"]) and len(again) == 6
            stored.setdefault(name, []).append(record["values"])
    assert report["protocol"] == "tlp" and report["paired"] == []
    assert all(row["train_seconds"] > 0 for row in report["results"])
    for row in report["summary"]:
        values = np.array(stored[row["method"]])
        assert row["mean"] == pytest.approx(values.mean())
        assert row["tlp_interval"] == pytest.approx(1.96 * values.std(1).mean() / np.sqrt(6))
    from cmlearn.app.compare import format_table

    assert "TLP" in format_table(report)


def test_graph_benchmark_reference_computes_our_meta_loss() -> None:
    """The dense re-extracting G-Meta of ``cmlearn bench`` and ours agree (else the timing
    comparison would be void), and both back-propagate."""
    from cmlearn.app.bench.graph import ours, reference, step

    src = source()
    cfg = config("gmeta", **{"model.options.dropout": 0.0})
    learner = build_learner(cfg, src)
    learner.net.eval()
    batch = src.sample(1, generator("train", 0, 7))
    mine, ref = ours(learner, batch)(), reference(cfg, src, learner, batch)()
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    step(ours(learner, batch), learner)()
    assert all(p.grad is None for p in learner.net.parameters())  # cleared after the step


def test_graph_presets_are_first_order_as_tlp() -> None:
    """A preset names ``fomaml`` and its rule must say so too (``cmlearn train --preset`` does
    not re-apply the algorithm)."""
    from cmlearn.app.presets import PRESETS
    from cmlearn.core.algorithms import OWNED

    for name in (n for n in PRESETS if n.split("-")[-1] in ("gmeta", "ammgnn", "gcn", "paper")):
        cfg = get_preset(name)
        if cfg.model.name in ("gmeta", "ammgnn", "gcn"):
            assert cfg.algorithm == "fomaml" and cfg.inner.first_order, name
    for name, (_, data) in PRESETS.items():  # the algorithm's fields, unless the preset says
        cfg = get_preset(name)
        expected = cfg.with_algorithm(cfg.algorithm).inner
        stated = data.get("inner", {})
        for key in OWNED:
            if key not in stated:
                assert getattr(cfg.inner, key) == getattr(expected, key), (name, key)
