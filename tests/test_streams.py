"""Seeded random streams, validation procedure, chunked meta-gradients, devices, progress."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from cmlearn import CmlearnError
from cmlearn.app.build import build_learner, build_source
from cmlearn.app.evaluate import batches, fixed_tasks
from cmlearn.app.train import meta_gradient, train
from cmlearn.core.algorithms import InnerRule
from cmlearn.core.engine import Learner
from cmlearn.core.tasks import generator, task_seed
from cmlearn.core.tasks.batch import STREAMS
from tests.conftest import make_learner, sinusoid_batch


def test_no_two_streams_or_key_tuples_share_a_seed():
    # SeedSequence padded short entropy with zeros: (s, t) and (s, t, 0) used to coincide
    assert task_seed("train", 3, 5) != task_seed("train", 3, 5, 0)
    assert task_seed("train", 0) != task_seed("train", 0, 0)
    keys = [(1234,), (1234, 0), (1234, 1), (1234, 0, 0), (0, 1234)]
    seeds = [task_seed(s, *k) for s, k in itertools.product(STREAMS, keys)]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(CmlearnError, match="unknown random stream 'nope'; choose from init, "):
        task_seed("nope", 1)


def test_equal_run_and_eval_seeds_give_disjoint_training_validation_and_test_tasks(tiny_cfg):
    """With --seed 1234 (= eval.seed) the first training batches used to be the first
    validation and test tasks."""
    cfg = tiny_cfg.apply([("train.seed", 1234), ("eval.seed", 1234)])
    source = build_source(cfg)
    val = batches(fixed_tasks(source, 4, 1234, "val"))[0].support_x
    test = batches(fixed_tasks(source, 4, 1234, "test"))[0].support_x
    assert not torch.equal(val, test)
    for step in range(4):
        x = source.sample(4, generator("train", 1234, step), "train").support_x
        assert not torch.equal(x, val) and not torch.equal(x, test)


def test_model_init_is_independent_of_the_training_batches(tiny_cfg):
    """The model used to draw its initial weights from the stream of training batch 0."""
    assert task_seed("init", 0) not in {task_seed("train", 0, t) for t in range(100)}
    a = build_learner(tiny_cfg, build_source(tiny_cfg))
    torch.manual_seed(task_seed("train", tiny_cfg.train.seed, 0))
    b = build_learner(tiny_cfg, build_source(tiny_cfg))  # global RNG state does not matter
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p, q)
    other = build_learner(tiny_cfg.apply([("train.seed", 1)]), build_source(tiny_cfg))
    assert not torch.equal(next(a.net.parameters()), next(other.net.parameters()))


def test_validation_adapts_exactly_as_the_test_does(tiny_cfg, tmp_path, monkeypatch):
    seen: list[int | None] = []
    original = Learner.evaluate

    def spy(self, batch, mode="cml", steps=None, return_outputs=False):
        seen.append(steps)
        return original(self, batch, mode, steps, return_outputs)

    monkeypatch.setattr(Learner, "evaluate", spy)
    train(tiny_cfg.apply([("eval.steps", 3)]), tmp_path / "r", progress=False)
    assert seen and set(seen) == {3}


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunked_meta_gradient_equals_the_whole_batch(float64, chunk):
    """Second order, CML, 5 tasks: accumulating over chunks gives the same gradient."""
    batch = sinusoid_batch(n_tasks=5)
    whole, parts = make_learner(mode="cml", steps=2), make_learner(mode="cml", steps=2)
    a = meta_gradient(whole, batch, 0.0, 0, analyse=True)
    b = meta_gradient(parts, batch, 0.0, chunk, analyse=True)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for p, q in zip(whole.net.parameters(), parts.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    for layer, stats in a.analysis.items():
        for key, value in stats.items():
            assert b.analysis[layer][key] == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize("learn_lr", ["none", "element", "layer-step"])
def test_step_sizes_follow_the_parameters_device(learn_lr):
    """Step sizes are created where the parameters live (checked on the meta device)."""
    params = {"model.body.fc1.weight": torch.empty(4, 3, device="meta")}
    rule = InnerRule(steps=2, lr=0.1, learn_lr=learn_lr)
    sizes = rule.init_step_sizes(params)
    assert all(s.device.type == "meta" for s in sizes.values())


def test_a_learner_moves_to_the_requested_device(tiny_cfg):
    learner = build_learner(
        tiny_cfg.apply([("colearner.mode", "cml")]), build_source(tiny_cfg), torch.device("meta")
    )
    assert {p.device.type for p in learner.net.parameters()} == {"meta"}
    assert {s.device.type for s in learner.step_sizes.values()} == {"meta"}


def test_progress_off_a_terminal_is_a_few_plain_lines(tiny_cfg, tmp_path, capsys):
    train(dataclasses.replace(tiny_cfg), tmp_path / "r", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.strip().splitlines() if "new best" not in line]
    assert 2 <= len(lines) <= 21 and "100% (40/40)" in lines[-1]


@pytest.mark.parametrize(
    ("algorithm", "strategy", "sam_rho"),
    [("maml", "batched", 0.0), ("maml", "vmap", 0.0), ("maml", "loop", 0.0),
     ("metasgd", "batched", 0.0), ("maml", "batched", 0.05)],
)  # fmt: skip
def test_a_checkpointed_inner_loop_gives_the_same_meta_gradient(
    float64, algorithm, strategy, sam_rho, monkeypatch
):
    """Activation checkpointing recomputes each second-order inner step during the backward:
    the meta-gradient (learned step sizes and the inner SAM included) is unchanged."""
    import cmlearn.core.algorithms.rule as rule

    calls = []
    real = rule.checkpoint
    monkeypatch.setattr(rule, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = sinusoid_batch(n_tasks=3)
    grads = []
    for ckpt in (False, True):
        learner = make_learner(algorithm, mode="cml", strategy=strategy, steps=3)
        learner.rule = dataclasses.replace(learner.rule, checkpoint=ckpt, sam_rho=sam_rho)
        meta_gradient(learner, batch, 0.0, 0)
        grads.append({k: p.grad.clone() for k, p in learner.net.named_parameters()})
        grads[-1] |= {f"α.{k}": s.grad.clone() for k, s in learner.step_sizes.items()
                      if s.grad is not None}  # fmt: skip
    assert len(calls) == 3  # one per inner step, only when asked
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("α.") for k in grads[0]) == (algorithm == "metasgd")
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12, msg=name)
