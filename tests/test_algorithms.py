"""Each algorithm steps the right parameter groups with the right step sizes."""

from __future__ import annotations

import pytest
import torch

from cmlearn.core.algorithms import ALGORITHMS, InnerRule, adapt, algorithm_rule
from cmlearn.core.algorithms.rule import Stage, group_of
from cmlearn.core.engine import expand, forward_tasks, task_losses
from tests.conftest import make_learner, sinusoid_batch


def _adapted(learner, batch):
    params = expand(learner.params(), batch.n_tasks)

    def loss(p, step):
        (out,) = forward_tasks(learner.net, p, batch.support_x, ("meta",), learner.strategy)
        return task_losses(out, batch.support_y, "mse")

    return params, adapt(params, learner.step_sizes, learner.rule, loss, learner.rule.steps, False)[
        -1
    ]


@pytest.mark.parametrize(
    ("algorithm", "moving"),
    [
        ("maml", {"body", "head"}),
        ("anil", {"head"}),
        ("boil", {"body"}),
        ("metasgd", {"body", "head"}),
        ("fomaml", {"body", "head"}),
    ],
)
def test_groups_that_step(algorithm, moving):
    learner = make_learner(algorithm=algorithm, mode="cml")
    batch = sinusoid_batch()
    before, after = _adapted(learner, batch)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (group_of(name) in moving), name


def test_metasgd_learns_a_step_size_per_element():
    learner = make_learner(algorithm="metasgd", mode="none")
    for name, p in learner.net.named_parameters():
        assert learner.step_sizes[name].shape == p.shape
    learner.meta_objective(sinusoid_batch())[0].backward()
    for name, size in learner.step_sizes.items():
        assert size.grad is not None and size.grad.abs().sum() > 0, name


def test_mamlpp_learns_per_layer_per_step_sizes_and_anneals():
    learner = make_learner(algorithm="mamlpp", mode="none", steps=3)
    rule = learner.rule
    for name, p in learner.net.named_parameters():
        assert learner.step_sizes[name].shape == (3,) + (1,) * p.dim()
    learner.meta_objective(sinusoid_batch(), progress=0.5)[0].backward()
    grads = torch.stack([s.grad.flatten() for s in learner.step_sizes.values()])
    assert (grads.abs() > 0).all(), "every step's size gets a gradient"
    assert rule.is_first_order(Stage(0.1)) and not rule.is_first_order(Stage(0.5))
    early, late = rule.step_weights(0, 3), rule.step_weights(rule.msl_epochs, 3)
    assert sum(early) == pytest.approx(1) and early[0] > 0
    assert late == [0.0, 0.0, 1.0]


def test_mamlpp_first_order_phase_matches_fomaml_gradient():
    batch = sinusoid_batch()
    pp = make_learner(algorithm="mamlpp", mode="none", steps=1)
    fo = make_learner(algorithm="fomaml", mode="none", steps=1)
    pp.meta_objective(batch, progress=0.0)[0].backward()
    fo.meta_objective(batch)[0].backward()
    for p, q in zip(pp.net.parameters(), fo.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_every_algorithm_is_a_few_overrides_of_the_shared_rule():
    base = InnerRule(steps=2, lr=0.3)
    for name in ALGORITHMS:
        rule = algorithm_rule(name, base)
        assert (rule.steps, rule.lr) == (2, 0.3)
    with pytest.raises(KeyError):
        algorithm_rule("reptile", base)


def test_invalid_rule_is_rejected():
    with pytest.raises(ValueError, match="steps"):
        InnerRule(steps=0)
    with pytest.raises(ValueError, match="learn_lr"):
        InnerRule(learn_lr="sometimes")
