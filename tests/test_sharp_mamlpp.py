"""Sharp-MAML (inner / outer / both SAM; Abbas et al., ICML 2022) and the complete MAML++
(Antoniou et al., ICLR 2019, and github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cmlearn import CmlearnError
from cmlearn.app.config import Config
from cmlearn.app.evaluate import (
    EvalSpec,
    ensemble_paths,
    ensemble_scores,
    fixed_tasks,
    read_member,
    run_scores,
    scores,
)
from cmlearn.app.runs import CHECKPOINT, MODEL, load_run
from cmlearn.app.train import Interrupted, outer_step, scheduled_lr, train
from cmlearn.core.algorithms import InnerRule, Stage, adapt, algorithm_rule
from cmlearn.core.algorithms.rule import sam_perturbation
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner, expand, forward_tasks, task_accuracy, task_losses
from cmlearn.core.models import MLP, Cooperative
from cmlearn.core.models.cooperative import BodyHead
from cmlearn.core.models.layers import StepBatchNorm2d
from cmlearn.core.tasks import TaskBatch
from tests.conftest import make_learner, sinusoid_batch
from tests.test_models import image_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- Sharp-MAML: inner SAM


def _linear_loss(x: torch.Tensor, y: torch.Tensor):
    """Per-task mean squared error of a linear model ``x @ w`` (w: ``[T, d]``)."""

    def loss(p: dict, step: int) -> torch.Tensor:
        return ((torch.einsum("tnd,td->tn", x, p["w"]) - y) ** 2).mean(1)

    return loss


def _linear_grad(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Closed form: ∇_w mean((x w − y)²) = 2/n · xᵀ(x w − y), per task."""
    residual = torch.einsum("tnd,td->tn", x, w) - y
    return 2 / x.shape[1] * torch.einsum("tnd,tn->td", x, residual)


def _linear_tasks(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    x[1] *= 20  # tasks with very different gradient scales: a shared norm would show
    y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, generator=g, dtype=torch.float64)
    return x, y, w0


@pytest.mark.parametrize("first_order", [True, False])
def test_inner_sam_step_is_the_gradient_at_the_perturbed_point(first_order):
    """φ_new − φ = −α·∇L(φ + ε), ε = ρ·g/‖g‖ per task, from the unperturbed φ (§5.3)."""
    x, y, w0 = _linear_tasks()
    alpha, rho, steps = 0.05, 0.3, 2
    params = {"w": w0.expand(3, 4).clone().requires_grad_()}
    sizes = {"w": torch.tensor(alpha, dtype=torch.float64)}
    rule = InnerRule(steps=steps, lr=alpha)
    trajectory = adapt(params, sizes, rule, _linear_loss(x, y), steps, first_order, rho)
    w = params["w"].detach()
    for adapted in trajectory:
        g = _linear_grad(x, y, w)
        eps = rho * g / g.norm(dim=1, keepdim=True)
        expected = w - alpha * _linear_grad(x, y, w + eps)
        torch.testing.assert_close(adapted["w"].detach(), expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(expected, w + eps - alpha * _linear_grad(x, y, w + eps))
        w = expected


def test_inner_sam_second_order_differentiates_through_the_perturbation():
    """With second order the meta-gradient goes through g̃ and through ε: finite differences
    of θ ↦ L^Q(θ − α∇L^S(θ + ρ∇L^S/‖∇L^S‖)) agree with autograd."""
    x, y, w0 = _linear_tasks()
    xq, yq = x.flip(1), y.flip(1)
    alpha, rho = 0.05, 0.3
    sizes = {"w": torch.tensor(alpha, dtype=torch.float64)}
    rule = InnerRule(steps=1, lr=alpha)

    def outer(theta: torch.Tensor, first_order: bool = False) -> torch.Tensor:
        params = {"w": theta.expand(3, 4)}
        adapted = adapt(params, sizes, rule, _linear_loss(x, y), 1, first_order, rho)[-1]
        return _linear_loss(xq, yq)(adapted, 0).sum()

    theta = w0.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(outer(theta), theta)
    numeric = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[i] = 1e-6
        up, down = (w0 + e).requires_grad_(), (w0 - e).requires_grad_()
        numeric[i] = (outer(up) - outer(down)).item() / 2e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    (first,) = torch.autograd.grad(outer(theta, True), theta)
    assert not torch.allclose(first, numeric, rtol=1e-3)  # the second-order terms matter


def test_inner_perturbation_has_norm_rho_for_every_task():
    """‖ε‖₂ = ρ per task over the concatenation of all adapted tensors, not per meta-batch."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, 5, generator=g), torch.randn(4, 7, generator=g)]
    grads = [
        t * torch.tensor([1e-3, 1.0, 50.0, 1e4]).view(-1, *(1,) * (t.dim() - 1)) for t in grads
    ]
    rho = 5e-4
    eps = sam_perturbation(grads, rho)
    for task in range(4):
        flat = torch.cat([e[task].flatten() for e in eps])
        direction = torch.cat([t[task].flatten() for t in grads])
        assert flat.norm().item() == pytest.approx(rho, rel=1e-5)
        cosine = torch.nn.functional.cosine_similarity(flat, direction, dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-6)


def test_inner_sam_counts_forwards_and_rho_zero_skips_the_extra_one():
    x, y, w0 = _linear_tasks()
    calls = {"n": 0}
    base = _linear_loss(x, y)

    def loss(p, step):
        calls["n"] += 1
        return base(p, step)

    params = {"w": w0.expand(3, 4).clone().requires_grad_()}
    sizes = {"w": torch.tensor(0.1, dtype=torch.float64)}
    rule = InnerRule(steps=3, lr=0.1)
    plain = adapt(params, sizes, rule, loss, 3, False)
    assert calls["n"] == 3
    zero = adapt(params, sizes, rule, loss, 3, False, 0.0)
    assert calls["n"] == 6
    assert all(torch.equal(a["w"], b["w"]) for a, b in zip(plain, zero, strict=True))
    adapt(params, sizes, rule, loss, 3, False, 0.1)
    assert calls["n"] == 12  # two forwards per SAM step: the cost doubles


def _learner(algorithm: str = "maml", sam: float = 0.0, mode: str = "cml", steps: int = 2):
    learner = make_learner(algorithm=algorithm, mode=mode, steps=steps)
    learner.rule = dataclasses.replace(learner.rule, sam_rho=sam)
    return learner


def _optimizer(learner: Learner) -> torch.optim.Optimizer:
    params = [*learner.net.model.parameters()]
    params += [s for s in learner.step_sizes.values() if s.requires_grad]
    if learner.co.trained:
        params += [*learner.net.colearner.parameters()]
    return torch.optim.Adam(params, lr=1e-2)


def test_sam_radii_zero_train_exactly_as_maml():
    """inner.sam_rho = train.sam_rho = 0 gives MAML's parameters bit for bit after 2 steps."""
    maml, sharp = make_learner(steps=2), _learner(sam=0.0)
    opts = [_optimizer(maml), _optimizer(sharp)]
    for step in range(2):
        batch = sinusoid_batch(seed=step)
        outer_step(maml, opts[0], batch, 0.0)
        outer_step(sharp, opts[1], batch, 0.0, sam_rho=0.0)
    for (name, p), q in zip(maml.net.named_parameters(), sharp.net.parameters(), strict=True):
        assert torch.equal(p, q), name
    moved = _learner(sam=0.01)
    outer_step(moved, _optimizer(moved), sinusoid_batch(seed=0), 0.0)
    assert not torch.equal(moved.net.model.body[0].weight, maml.net.model.body[0].weight)


def test_no_sam_at_test_time():
    """Evaluation adapts without SAM: its result does not depend on inner.sam_rho."""
    batch = sinusoid_batch()
    plain, sharp = _learner(sam=0.0), _learner(sam=0.5)
    for mode in ("cml", "cml-dagger", "cml-dagger-code"):
        a = plain.evaluate(batch, mode, return_outputs=True)
        b = sharp.evaluate(batch, mode, return_outputs=True)
        assert torch.equal(a["output"], b["output"]), mode
    assert plain.meta_objective(batch)[0] != sharp.meta_objective(batch)[0]  # SAM in training


# ---------------------------------------------------------------- Sharp-MAML: outer SAM


class Recording(torch.optim.SGD):
    """SGD that records the parameters and gradients it is asked to step with."""

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.seen = [
            (p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in params
        ]
        return super().step(closure)


@pytest.mark.parametrize(("algorithm", "chunk"), [("maml", 0), ("metasgd", 0), ("maml", 2)])
def test_outer_sam_steps_with_the_gradient_at_the_perturbed_point(float64, algorithm, chunk):
    """G at θ; ε = ρG/‖G‖ over every stepped tensor (ψ, θ, learned step sizes, ϕ); the
    optimiser sees θ restored exactly and the meta-gradient at θ + ε on the same tasks."""
    rho, batch = 0.05, sinusoid_batch(n_tasks=4)
    learner = _learner(algorithm, sam=0.0)
    reference = _learner(algorithm, sam=0.0)
    params = [p for g in _optimizer(reference).param_groups for p in g["params"]]
    loss, _ = reference.meta_objective(batch)
    grads = torch.autograd.grad(loss, params)
    norm = torch.cat([g.flatten() for g in grads]).norm()
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(rho * g / norm)
    expected = torch.autograd.grad(reference.meta_objective(batch)[0], params)

    mine = [p for g in _optimizer(learner).param_groups for p in g["params"]]
    before = [p.detach().clone() for p in mine]
    optimizer = Recording(mine, lr=0.0)  # lr 0: θ after the step is what SGD was given
    result = outer_step(learner, optimizer, batch, 0.0, chunk=chunk, sam_rho=rho)
    for (value, grad), original, want in zip(optimizer.seen, before, expected, strict=True):
        assert torch.equal(value, original), "θ is restored before the optimiser step"
        torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)
    assert result.loss == pytest.approx(loss.item(), rel=1e-12), "the logged loss is at θ"


def test_gradient_clamp_bounds_every_element():
    """train.grad_clamp: the optimiser steps with every element clamped to ±c (MAML++)."""
    learner = _learner()
    optimizer = Recording(list(learner.net.parameters()), lr=0.0)  # lr 0: θ stays
    outer_step(learner, optimizer, sinusoid_batch(), 0.0)
    free = [g for _, g in optimizer.seen]
    clamp = sorted(g.abs().max().item() for g in free)[len(free) // 2]
    outer_step(learner, optimizer, sinusoid_batch(), 0.0, grad_clamp=clamp)
    for raw, got in zip(free, (g for _, g in optimizer.seen), strict=True):
        assert torch.equal(raw.clamp(-clamp, clamp), got)
    assert max(g.abs().max().item() for _, g in optimizer.seen) == clamp


# ---------------------------------------------------------------- MAML++: multi-step loss

# N = 5; (E, e) -> (every non-final weight, final weight)
MSL_TABLE = [
    (15, 0, 0.2, 0.2),
    (15, 1, 0.1867, 0.2533),
    (15, 5, 0.1333, 0.4667),
    (15, 10, 0.0667, 0.7333),
    (15, 14, 0.0133, 0.9467),
    (10, 1, 0.18, 0.28),
    (10, 5, 0.10, 0.60),
    (10, 9, 0.02, 0.92),
    (50, 49, 0.006, 0.976),
    (15, 15, 0.0, 1.0),
    (10, 10, 0.0, 1.0),
    (10, 99, 0.0, 1.0),
]


@pytest.mark.parametrize(("epochs", "epoch", "early", "final"), MSL_TABLE)
def test_multi_step_loss_weights_are_the_released_codes(epochs, epoch, early, final):
    rule = algorithm_rule("mamlpp", InnerRule(steps=5, lr=0.01))
    rule = dataclasses.replace(rule, msl_epochs=epochs)
    weights = rule.step_weights(epoch, 5)
    assert weights[:4] == [weights[0]] * 4
    assert weights[0] == pytest.approx(early, abs=5e-5)
    assert weights[4] == pytest.approx(final, abs=5e-5)
    assert sum(weights) == pytest.approx(1.0)


def test_multi_step_loss_is_off_for_other_algorithms_and_at_zero_epochs():
    assert InnerRule(steps=5).step_weights(0, 5) == [0.0] * 4 + [1.0]
    rule = InnerRule(steps=5, multi_step_loss=True, msl_epochs=0)
    assert rule.step_weights(0, 5) == [0.0] * 4 + [1.0]
    assert algorithm_rule("mamlpp", InnerRule()).msl_epochs == 10  # MAML++ Omniglot (§3.3)


def test_meta_objective_weighs_each_steps_query_loss_by_epoch():
    learner = make_learner(algorithm="mamlpp", mode="none", steps=3)
    batch = sinusoid_batch()
    params = expand(learner.params(), batch.n_tasks)

    def support(p, step):
        (out,) = forward_tasks(learner.net, p, batch.support_x, ("meta",), learner.strategy)
        return task_losses(out, batch.support_y, "mse")

    trajectory = adapt(params, learner.step_sizes, learner.rule, support, 3, True)
    per_step = []
    for adapted in trajectory:
        (out,) = forward_tasks(learner.net, adapted, batch.query_x, ("meta",), learner.strategy)
        per_step.append(task_losses(out, batch.query_y, "mse").mean())
    for epoch in (0, 4, 10):
        weights = learner.rule.step_weights(epoch, 3)
        want = sum(w * loss for w, loss in zip(weights, per_step, strict=True))
        got = learner.meta_objective(batch, Stage(0.0, epoch))[0]
        torch.testing.assert_close(got, want)


def test_stage_counts_epochs_of_epoch_steps_iterations():
    assert Stage.at(0, 50_000, 500) == Stage(0.0, 0)
    assert Stage.at(499, 50_000, 500).epoch == 0
    assert Stage.at(500, 50_000, 500).epoch == 1
    assert Stage.at(25_000, 50_000, 500) == Stage(0.5, 50)
    assert Stage.of(0.25) == Stage(0.25, 0)


def test_mamlpp_switches_to_second_order_halfway_as_the_paper():
    rule = algorithm_rule("mamlpp", InnerRule())
    assert rule.first_order_until == 0.5
    assert rule.is_first_order(Stage.at(24_999, 50_000, 500))
    assert not rule.is_first_order(Stage.at(25_000, 50_000, 500))


# ---------------------------------------------------------------- MAML++: cosine meta-lr


def test_cosine_meta_lr_is_torchs_closed_form_stepped_per_epoch():
    cfg = Config().apply(
        [
            ("train.steps", 1_000),
            ("train.epoch_steps", 100),
            ("train.lr_schedule", "cosine"),
            ("train.min_lr", 1e-5),
        ]
    )
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-5)
    for epoch in range(10):
        for step in (epoch * 100, epoch * 100 + 99):
            assert scheduled_lr(cfg, 1e-3, step) == pytest.approx(sched.get_last_lr()[0], rel=1e-9)
        opt.step()
        sched.step()
    flat = cfg.apply([("train.min_lr", 1e-3)])  # MAML++ miniImageNet: η_min = base lr
    assert {scheduled_lr(flat, 1e-3, s) for s in range(0, 1_000, 50)} == {1e-3}
    assert scheduled_lr(cfg.apply([("train.lr_schedule", "constant")]), 1e-3, 999) == 1e-3
    # T_max = ⌈steps / epoch_steps⌉: a last, partial epoch counts
    odd = cfg.apply([("train.steps", 950)])
    assert scheduled_lr(odd, 1e-3, 900) == pytest.approx(
        1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 9 / 10)) / 2
    )


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = torch.load(a / CHECKPOINT), torch.load(b / CHECKPOINT)
    for k in ca["net"]:
        assert torch.equal(ca["net"][k], cb["net"][k]), k
    assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    for i, state in ca["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[key], cb["optimizer"]["state"][i][key])
    assert _records(a) == _records(b)


@pytest.fixture
def mamlpp_cfg(tiny_cfg):
    """MAML++ with every schedule in a 40-step run: 8 epochs of 5 steps, MSL over 4, cosine."""
    return tiny_cfg.override(
        [
            "algorithm=mamlpp",
            "inner.steps=2",
            "inner.msl_epochs=4",
            "train.epoch_steps=5",
            "train.lr_schedule=cosine",
            "train.min_lr=1e-4",
            "train.grad_clamp=5",
            "colearner.mode=cml",
        ]
    )


def test_mamlpp_schedules_resume_exactly(mamlpp_cfg, tmp_path):
    train(mamlpp_cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted):
        train(mamlpp_cfg, tmp_path / "cut", progress=False, should_stop=lambda step: step == 17)
    train(mamlpp_cfg, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    lrs = [r["meta_lr"] for r in _records(tmp_path / "full") if "meta_lr" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-3 and lrs[-1] > 1e-4


def test_resume_refuses_another_epoch_length(mamlpp_cfg, tmp_path):
    with pytest.raises(Interrupted):
        train(mamlpp_cfg, tmp_path / "r", progress=False, should_stop=lambda step: step == 7)
    longer = mamlpp_cfg.override(["train.epoch_steps=10"])
    with pytest.raises(CmlearnError, match="keeps train.epoch_steps 5"):
        train(longer, tmp_path / "r", resume=True, progress=False)
    cosine = mamlpp_cfg.override(["algorithm=maml"])
    with pytest.raises(Interrupted):
        train(cosine, tmp_path / "c", progress=False, should_stop=lambda step: step == 7)
    with pytest.raises(CmlearnError, match=r"\(cosine meta-lr\).*keeps --steps 40"):
        train(cosine.override(["train.steps=80"]), tmp_path / "c", resume=True, progress=False)
    constant = cosine.override(["train.lr_schedule=constant"])
    with pytest.raises(Interrupted):
        train(constant, tmp_path / "k", progress=False, should_stop=lambda step: step == 7)
    train(constant.override(["train.steps=50"]), tmp_path / "k", resume=True, progress=False)


def test_outer_and_inner_sam_train_and_resume_exactly(tiny_cfg, tmp_path):
    """Sharp-MAML _both with CML and task chunks: an interrupted run resumes exactly."""
    cfg = tiny_cfg.override(
        ["inner.sam_rho=0.01", "train.sam_rho=0.01", "train.task_chunk=2", "colearner.mode=cml"]
    )
    train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut", progress=False, should_stop=lambda step: step == 13)
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    plain = tiny_cfg.override(["colearner.mode=cml", "train.task_chunk=2"])
    train(plain, tmp_path / "plain", progress=False)
    assert _records(tmp_path / "plain") != _records(tmp_path / "full")


# ---------------------------------------------------------------- MAML++: top-k ensemble


def _top(run: Path) -> dict[int, float]:
    return {read_member(p)["step"]: read_member(p)["value"] for p in ensemble_paths(run)}


@pytest.fixture
def ensemble_cfg(tiny_cfg):
    return tiny_cfg.override(["eval.ensemble=2", "train.val_every=5", "colearner.mode=cml"])


def test_top_k_checkpoints_are_the_k_best_validations_and_survive_resume(ensemble_cfg, tmp_path):
    run = tmp_path / "full"
    train(ensemble_cfg, run, progress=False)
    vals = {r["step"]: r["val_mse"] for r in _records(run) if "val_mse" in r}
    best = sorted(vals, key=lambda s: (vals[s], s))[:2]
    assert _top(run) == {s: vals[s] for s in best}
    assert torch.load(run / MODEL)["step"] == best[0]

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(ensemble_cfg, cut, progress=False, should_stop=lambda step: step == 17)
    # a file written after the checkpoint (a kill before the checkpoint): dropped on resume
    fake = read_member(ensemble_paths(cut)[0]) | {"step": 25, "value": -1.0}
    torch.save(fake, cut / "top-25.pt")
    train(ensemble_cfg, cut, resume=True, progress=False)
    assert _top(cut) == _top(run)
    for a, b in zip(ensemble_paths(run), ensemble_paths(cut), strict=True):
        ma, mb = read_member(a), read_member(b)
        assert all(torch.equal(ma["model"][k], mb["model"][k]) for k in ma["model"])
    with pytest.raises(CmlearnError, match="cannot keep more"):
        train(ensemble_cfg.override(["eval.ensemble=3"]), cut, resume=True, progress=False)


def test_ensemble_of_one_is_the_best_checkpoint(ensemble_cfg, tmp_path):
    from cmlearn.app.build import build_source

    run = tmp_path / "r"
    train(ensemble_cfg, run, progress=False)
    cfg, learner = load_run(run)
    source = build_source(cfg)
    tasks = fixed_tasks(source, 30, cfg.eval.seed, "test")
    spec = EvalSpec(source.metric)
    best = scores(learner, tasks, spec)
    one = run_scores(run, cfg.override(["eval.ensemble=1"]), learner, tasks, spec)
    assert (one == best).all()
    two = run_scores(run, cfg, learner, tasks, spec)
    assert not (two == best).all()
    assert (scores(learner, tasks, spec) == best).all(), "the learner is restored"


def test_ensemble_averages_the_members_logits_per_task():
    """k = 2: the ensemble's logits are the mean of both adapted models' logits; accuracy
    is the argmax of that mean."""
    torch.manual_seed(0)
    batch = image_tasks(n_tasks=4, ways=3, shots=2, queries=5, size=4)
    batch = TaskBatch(
        batch.support_x.flatten(2), batch.support_y, batch.query_x.flatten(2), batch.query_y
    )

    def learner(seed: int) -> Learner:
        torch.manual_seed(seed)
        rule = InnerRule(steps=2, lr=0.5)
        return Learner.create(Cooperative(MLP(16, (8,), 3)), rule, CoLearnerSpec(), "ce", "batched")

    a, b = learner(1), learner(2)
    members = [
        {
            "model": {k: v.clone() for k, v in m.net.model.state_dict().items()},
            "step_sizes": {k: v.clone() for k, v in m.step_sizes.items()},
        }
        for m in (a, b)
    ]
    logits = [m.evaluate(batch, return_outputs=True)["output"] for m in (a, b)]
    mean = (logits[0] + logits[1]) / 2
    got = ensemble_scores(a, members, [batch], EvalSpec("accuracy"))
    torch.testing.assert_close(torch.from_numpy(got), task_accuracy(mean, batch.query_y).double())
    loss = ensemble_scores(a, members, [batch], EvalSpec("loss"))
    torch.testing.assert_close(
        torch.from_numpy(loss), task_losses(mean, batch.query_y, "ce").double()
    )
    assert not torch.equal(logits[0].argmax(-1), logits[1].argmax(-1))  # a real ensemble


# ---------------------------------------------------------------- MAML++: per-step BN statistics


def _bnrs_learner(steps: int = 2, track: bool = True) -> Learner:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            StepBatchNorm2d(3, steps, track_running_stats=track),
            nn.ReLU(),
        )
    )
    head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    rule = algorithm_rule("mamlpp", InnerRule(steps=steps, lr=0.1))
    strategy = "loop" if track else "vmap"
    return Learner.create(Cooperative(BodyHead(body, head)), rule, CoLearnerSpec(), "ce", strategy)


def test_bnrs_buffers_are_per_step_and_updated_with_momentum_0_1():
    learner = _bnrs_learner()
    bn = learner.net.model.body[0][1]
    assert bn.running_mean.shape == bn.running_var.shape == (2, 3)  # [N, C]
    assert learner.step_buffers == {
        "model.body.0.1.running_mean",
        "model.body.0.1.running_var",
    }
    x = torch.randn(5, 1, 8, 8)
    params = {k: v.unsqueeze(0) for k, v in learner.params().items()}
    conv = nn.functional.conv2d(
        x, learner.net.model.body[0][0].weight, learner.net.model.body[0][0].bias, padding=1
    )
    forward_tasks(
        learner.forward,
        params,
        x.unsqueeze(0),
        ("meta",),
        "loop",
        1,
        learner.per_step,
        learner.buffers(),
    )
    mean = conv.mean((0, 2, 3))
    var = conv.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean[1], 0.1 * mean)
    torch.testing.assert_close(bn.running_var[1], 0.9 + 0.1 * var)
    assert torch.equal(bn.running_mean[0], torch.zeros(3)), "row 0 untouched by step 1"


def test_bnrs_statistics_normalise_in_eval_mode_and_training_fills_every_row():
    learner = _bnrs_learner()
    batch = image_tasks(n_tasks=2, ways=3, shots=2, queries=3, size=8)
    learner.meta_objective(batch)[0].backward()
    bn = learner.net.model.body[0][1]
    assert (bn.running_mean != 0).all(), "support and query passes of both steps update"
    learner.net.eval()
    x = torch.randn(4, 3, 8, 8)
    out = bn(x)  # the full table outside the engine: row 0
    manual = (x - bn.running_mean[0].view(1, 3, 1, 1)) / torch.sqrt(
        bn.running_var[0].view(1, 3, 1, 1) + bn.eps
    )
    torch.testing.assert_close(
        out, manual * bn.weight[0].view(1, 3, 1, 1) + bn.bias[0].view(1, 3, 1, 1)
    )
    before = bn.running_mean.clone()
    scored = learner.evaluate(batch)
    assert torch.equal(bn.running_mean, before), "evaluation never updates the statistics"
    transductive = _bnrs_learner(track=False)  # the same weights, batch statistics
    assert transductive.step_buffers == frozenset()
    assert not torch.equal(scored["loss"], transductive.evaluate(batch)["loss"])


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("inner.sam_rho=-1", "inner.sam_rho"),
        ("inner.msl_epochs=-1", "inner.msl_epochs"),
        ("train.sam_rho=nan", "train.sam_rho"),
        ("train.grad_clamp=-1", "train.grad_clamp"),
        ("train.min_lr=-1", "train.min_lr"),
        ("train.lr_schedule=linear", "train.lr_schedule"),
        ("train.epoch_steps=0", "train.epoch_steps"),
        ("eval.ensemble=-1", "eval.ensemble"),
        ("eval.protocol=tlp", "eval.ensemble needs"),
    ],
)
def test_new_settings_are_checked(assignment, message):
    with pytest.raises(CmlearnError, match=message):
        Config().override(["eval.ensemble=2", assignment])
