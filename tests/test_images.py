"""Conv-4 with CML as the paper and its code define it: equivalences, gradients, counts, MAML++."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cmlearn import CmlearnError
from cmlearn.app.config import Config
from cmlearn.app.train import make_optimizer, outer_step
from cmlearn.core.algorithms import InnerRule
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.models import ConvNet, Cooperative, build_colearner, parameter_counts
from cmlearn.core.models.layers import Conv2d, StepBatchNorm2d
from tests.conftest import central_difference, needs_omniglot
from tests.test_models import image_tasks


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper_and_the_official_code():
    """CML paper Table 4 (official code, maml/model_cml.py): 84 px, 5-way, Conv(2) co-learner
    on the 64×10×10 pre-pool map."""
    maml = ConvNet(3, 5, 84)
    assert n_params(maml.body) == 113_088 and n_params(maml.head) == 8_005
    assert n_params(maml) == 121_093
    feature = Cooperative(maml).features(torch.zeros(2, 3, 84, 84)).shape[1:]
    assert tuple(feature) == (64, 10, 10)
    co = build_colearner(feature, 5, conv_layers=2)
    assert n_params(co) == 82_117
    assert n_params(Cooperative(maml, co)) == 203_210  # CML during training
    assert n_params(maml.body) + n_params(co) == 195_205  # CML† at test
    assert n_params(ConvNet(3, 5, 84, extra=3)) == 232_261  # More-MAML
    counts = parameter_counts(Cooperative(maml, co))
    assert counts == {
        "body": 113_088,
        "head": 8_005,
        "colearner": 82_117,
        "train": 203_210,
        "test": 121_093,
        "test_dagger": 195_205,
    }
    more = parameter_counts(Cooperative(ConvNet(3, 5, 84, extra=3)))
    assert more["train"] == more["test"] == 232_261 and more["colearner"] == 0


C, FC = 64, 64 * 5 * 5 * 5 + 5  # Conv-4's pre-pool map at 84 px; its 2×2 pool + 5-way FC
BLOCK = 9 * C * C + C + 2 * C  # 3×3 conv with bias, BatchNorm γ and β


@pytest.mark.parametrize("k", range(5))
def test_colearner_depth_conv_k_plus_fc(k):
    """Table 8's Conv(0)…Conv(4) on the 64×10×10 map: k conv blocks, one 2×2 max-pool at the
    end of the last (bare for k = 0), then the FC on 64·5·5."""
    co = build_colearner((C, 10, 10), 5, conv_layers=k)
    assert n_params(co) == k * BLOCK + FC
    assert (k, n_params(co)) in {(0, 8_005), (1, 45_061), (2, 82_117), (3, 119_173), (4, 156_229)}
    kinds = [type(m) for m in co.modules() if not isinstance(m, nn.Sequential)]
    pools = [i for i, t in enumerate(kinds) if t is nn.MaxPool2d]
    assert kinds.count(Conv2d) == k and len(pools) == 1
    # the pool closes the last block (before its ReLU, with which it commutes)
    assert kinds[pools[0] + 1 :] == [nn.ReLU] * (k > 0) + [nn.Flatten, nn.Linear]
    assert tuple(co(torch.randn(2, C, 10, 10)).shape) == (2, 5)


@pytest.mark.parametrize("k", [0, 2])
def test_same_structure_head_and_colearner(k):
    """Table 7: θ = Conv(k)+FC on the same pre-pool map as the co-learner's Conv(k)+FC."""
    model = ConvNet(3, 5, 84, head_convs=k)
    assert n_params(model.body) == 113_088
    co = build_colearner((C, 10, 10), 5, conv_layers=k)
    shapes = [(n, p.shape) for n, p in model.head.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in co.named_parameters()]
    assert [type(m) for m in model.head.modules()] == [type(m) for m in co.modules()]
    assert n_params(model.head) == k * BLOCK + FC
    if k == 0:  # today's head, unchanged: pool → flatten → linear
        assert [type(m) for m in model.head] == [nn.MaxPool2d, nn.Flatten, nn.Linear]
        assert [type(m) for m in co] == [nn.MaxPool2d, nn.Flatten, nn.Linear]
        assert [n for n, _ in model.head.named_parameters()] == ["2.weight", "2.bias"]
    assert tuple(model(torch.randn(2, 3, 84, 84)).shape) == (2, 5)


def test_a_conv_head_is_adapted_as_the_head():
    """θ's convs are ``model.head.*``: MAML adapts them, BOIL freezes them in the inner loop."""
    maml = omniglot_like("cml", 1.0, "maml", channels=4, head_convs=2)
    boil = omniglot_like("cml", 1.0, "boil", channels=4, head_convs=2)
    name = "model.head.0.0.weight"
    assert name in maml.step_sizes and name not in boil.step_sizes
    result = outer_step(boil, make_optimizer(boil, Config()), conv_tasks(2, 1), 0.5)
    assert torch.isfinite(torch.tensor(result.loss))


def omniglot_like(
    mode: str, gamma: float, algorithm: str = "maml", steps: int = 1, **model
) -> Learner:
    """A learner built by the library from a Conv-4 config (no data needed: 1×28×28, 5-way)."""
    from cmlearn.app.build import build_learner

    cfg = Config().apply(
        [
            ("model.name", "conv4"),
            ("model.channels", 8),
            *((f"model.{k}", v) for k, v in model.items()),
            ("colearner.head.name", "conv"),
            ("colearner.mode", mode),
            ("colearner.gamma", gamma),
            ("algorithm", algorithm),
            ("inner.lr", 0.4),
            ("inner.steps", steps),
        ]
    )

    class Source:
        input_shape, out_features, loss = (1, 28, 28), 5, "ce"

        def sample(self, n_tasks: int, gen, split: str = "train"):
            return conv_tasks(n_tasks, 0)

    return build_learner(cfg, Source())


def conv_tasks(n_tasks: int, seed: int):
    return image_tasks(n_tasks=n_tasks, ways=5, shots=1, queries=3, size=28, seed=seed)


def test_cml_with_gamma_zero_is_maml_bit_for_bit_on_conv4():
    maml, cml = omniglot_like("none", 0.0), omniglot_like("cml", 0.0)
    opts = [make_optimizer(x, Config()) for x in (maml, cml)]
    for step in range(3):
        batch = conv_tasks(2, step)
        for learner, opt in zip((maml, cml), opts, strict=True):
            outer_step(learner, opt, batch, 0.0)
    for (name, p), q in zip(
        maml.net.model.named_parameters(), cml.net.model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    assert cml.net.colearner is not None and maml.net.colearner is None


def test_the_colearner_changes_the_body_when_gamma_is_positive():
    maml, cml = omniglot_like("none", 0.0), omniglot_like("cml", 1.0)
    for learner in (maml, cml):
        outer_step(learner, make_optimizer(learner, Config()), conv_tasks(2, 0), 0.0)
    body = zip(maml.net.model.body.parameters(), cml.net.model.body.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in body)


def test_conv_meta_gradient_matches_finite_differences(float64):
    """Second-order CML meta-gradient of a tiny conv net, against central differences."""
    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, channels=2, blocks=2)
    co = build_colearner(
        Cooperative(model).features(torch.zeros(2, 1, 8, 8)).shape[1:], 3, conv_layers=1
    )
    learner = Learner.create(
        Cooperative(model, co), InnerRule(steps=2, lr=0.3), CoLearnerSpec("cml", 0.7), "ce", "loop"
    )
    batch = image_tasks(n_tasks=2, ways=3, shots=2, queries=2, size=8)
    batch = type(batch)(
        *(
            t.double() if t.is_floating_point() else t
            for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        )
    )
    loss, _ = learner.meta_objective(batch)
    params = dict(learner.net.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    gen = torch.Generator().manual_seed(1)
    for name in (
        "model.body.conv1.0.weight",
        "model.body.conv2.1.weight",
        "model.head.2.bias",
        "colearner.0.0.weight",
    ):
        for i in torch.randint(0, params[name].numel(), (3,), generator=gen).tolist():
            numeric = central_difference(learner, batch, name, i)
            analytic = grads[name].view(-1)[i].item()
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_cml_dagger_on_conv4_against_a_hand_written_adaptation():
    """Eq. 9: adapt ψ only on the co-learner's support loss, predict with f^c(ψ', ϕ)."""
    learner = omniglot_like("cml", 1.0)
    batch = conv_tasks(2, 5)
    out = learner.evaluate(batch, "cml-dagger", return_outputs=True)["output"]
    net, alpha = learner.net, 0.4
    body = {k: v.detach() for k, v in net.model.body.named_parameters()}
    manual = []
    for i in range(batch.n_tasks):
        p = {k: v.clone().requires_grad_() for k, v in body.items()}
        loss = F.cross_entropy(
            net.colearner(functional_call(net.model.body, p, (batch.support_x[i],))),
            batch.support_y[i],
        )
        g = torch.autograd.grad(loss, list(p.values()))
        p = {k: v - alpha * gi for (k, v), gi in zip(p.items(), g, strict=True)}
        manual.append(net.colearner(functional_call(net.model.body, p, (batch.query_x[i],))))
    torch.testing.assert_close(out, torch.stack(manual).detach(), rtol=1e-4, atol=1e-5)
    # the official code's CML†: adapt (ψ, θ) on the meta-learner's loss, then the co-learner
    code = learner.evaluate(batch, "cml-dagger-code", return_outputs=True)["output"]
    manual = []
    for i in range(batch.n_tasks):
        p = {k: v.detach().clone().requires_grad_() for k, v in net.model.named_parameters()}
        loss = F.cross_entropy(
            functional_call(net.model, p, (batch.support_x[i],)), batch.support_y[i]
        )
        g = torch.autograd.grad(loss, list(p.values()))
        p = {k: v - alpha * gi for (k, v), gi in zip(p.items(), g, strict=True)}
        body = {k.removeprefix("body."): v for k, v in p.items() if k.startswith("body.")}
        manual.append(net.colearner(functional_call(net.model.body, body, (batch.query_x[i],))))
    torch.testing.assert_close(code, torch.stack(manual).detach(), rtol=1e-4, atol=1e-5)


def test_mamlpp_per_step_batchnorm_rows_are_picked_right(monkeypatch):
    """BNWB: the support pass of step i and the query pass after update i use row i; the final
    query evaluation after N updates uses row N − 1; more steps than rows fail loudly."""
    learner = omniglot_like("none", 0.0, "mamlpp", steps=3)  # rows follow inner.steps
    bns = [m for m in learner.net.modules() if isinstance(m, StepBatchNorm2d)]
    assert len(bns) == 4 and bns[0].bias.shape == (3, 8)
    with torch.no_grad():
        for m in bns:
            m.bias.copy_(torch.arange(3.0).view(3, 1).expand(3, 8))
    assert not any(k in learner.step_sizes for k in learner.per_step)  # outer-loop only
    rows: list[int] = []
    original = StepBatchNorm2d.forward

    def record(self, x):
        if self is bns[0]:
            rows.append(int(round(self.bias[0].item())))
        return original(self, x)

    monkeypatch.setattr(StepBatchNorm2d, "forward", record)
    batch = conv_tasks(1, 0)
    learner.meta_objective(batch, progress=0.0)  # multi-step loss: every step's query pass
    assert rows == [0, 1, 2, 0, 1, 2]
    rows.clear()
    learner.evaluate(batch, "cml", steps=3)
    assert rows == [0, 1, 2, 2]
    with pytest.raises(CmlearnError, match="per-step BatchNorm rows for 3"):
        learner.evaluate(batch, "cml", steps=4)


def test_maml_adapts_batchnorm_but_mamlpp_does_not():
    maml = omniglot_like("none", 0.0)
    mamlpp = omniglot_like("none", 0.0, "mamlpp")
    assert "model.body.conv1.1.weight" in maml.step_sizes
    assert "model.body.conv1.1.weight" not in mamlpp.step_sizes
    assert "model.body.conv1.0.weight" in mamlpp.step_sizes


@needs_omniglot
def test_omniglot_cml_end_to_end_saves_exactly_mamls_network(tmp_path):
    """Train a few steps on real Omniglot through the CLI, evaluate every mode; the saved
    inference model has MAML's parameters and nothing of the co-learner."""
    from cmlearn.app.cli import main

    tiny = ["--set", "train.val_every=2", "--set", "train.val_tasks=4", "--set", "eval.tasks=6",
            "--set", "model.channels=8", "--set", "task.meta_batch=2", "--quiet"]  # fmt: skip
    runs = {}
    for mode in ("none", "cml"):
        runs[mode] = tmp_path / mode
        args = ["--colearner", mode, "--steps", "4", "--device", "cpu", "--out", str(runs[mode])]
        code = main(["train", "--preset", "omniglot-5w1s-cpu", *args, *tiny])
        assert code == 0
    maml = torch.load(runs["none"] / "model.pt", weights_only=True)["model"]
    cml = torch.load(runs["cml"] / "model.pt", weights_only=True)["model"]
    assert {k: v.shape for k, v in cml.items()} == {k: v.shape for k, v in maml.items()}
    assert not any("colearner" in k for k in cml)
    for mode in ("cml", "cml-dagger", "cml-dagger-code"):
        assert main(["eval", str(runs["cml"]), "--mode", mode, "--json"]) == 0


@needs_omniglot
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algorithm", "mamlpp", "--set", "eval.steps=3"], "eval.steps=3 would use untrained"),
        (["--set", "model.bn_steps=3"], "rows beyond the training steps"),
        (["--set", "task.ways=2000"], "2000-way tasks need 2000 classes"),
        (["--set", "task.shots=10", "--set", "task.queries=11"], "only 20"),
        (["--set", "colearner.head.name=mlp", "--colearner", "cml"], "head.name=conv"),
        (["--device", "tpu"], "unknown device"),
        (["--set", "data.split=nope"], "omniglot split must be one of"),
    ],
)  # fmt: skip
def test_bad_image_settings_are_one_line_errors(tmp_path, capsys, args, message):
    from cmlearn.app.cli import main

    code = main(["train", "--preset", "omniglot-5w1s-cpu", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "r"), *args])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "boil", "metasgd", "mamlpp"])
@pytest.mark.parametrize("mode", ["none", "cml", "random", "cl"])
def test_every_algorithm_and_control_runs_on_conv4(algorithm, mode):
    """One outer step and every applicable evaluation mode, on the library-built Conv-4."""
    learner = omniglot_like(mode, 1.0, algorithm, channels=4)
    before = {k: v.detach().clone() for k, v in learner.net.named_parameters()}
    result = outer_step(learner, make_optimizer(learner, Config()), conv_tasks(2, 1), 0.5)
    assert torch.isfinite(torch.tensor(result.loss))
    after = dict(learner.net.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))
    if learner.net.colearner is not None:
        moved = any(not torch.equal(before[k], after[k]) for k in before if "colearner" in k)
        assert moved == (mode in ("cml", "cl"))  # random: ϕ frozen at its initialisation
    modes = ["cml"] + (["cml-dagger", "cml-dagger-code"] if mode != "none" else [])
    for eval_mode in modes:
        acc = learner.evaluate(conv_tasks(2, 2), eval_mode)["accuracy"]
        assert acc.shape == (2,) and bool(((acc >= 0) & (acc <= 1)).all())


def test_train_prints_the_parameter_counts_of_table_4():
    from cmlearn.app.train import describe_counts
    from cmlearn.core.models.cooperative import parameter_counts

    net = Cooperative(ConvNet(3, 5, 84), build_colearner((64, 10, 10), 5, conv_layers=2))
    line = describe_counts(parameter_counts(net))
    assert "co-learner 82,117 = 203,210 in training" in line
    assert "saved inference model 121,093; CML† 195,205" in line
    assert describe_counts(parameter_counts(Cooperative(ConvNet(3, 5, 84)))).endswith("121,093")
