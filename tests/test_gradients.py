"""Meta-gradients against finite differences and closed forms."""

from __future__ import annotations

import pytest
import torch

from cmlearn.core.engine import STRATEGIES
from tests.conftest import central_difference, make_learner, sinusoid_batch


def _finite_difference(learner, batch, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in learner.net.named_parameters():
        if not p.requires_grad:
            continue
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            g.view(-1)[i] = central_difference(learner, batch, name, i, eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("mode", ["none", "cml", "cl"])
def test_second_order_meta_gradient_matches_finite_differences(float64, mode):
    learner = make_learner(mode=mode, hidden=(4, 3), steps=2, lr=0.1)
    batch = sinusoid_batch(n_tasks=2)
    batch = type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )
    loss, _ = learner.meta_objective(batch)
    loss.backward()
    numeric = _finite_difference(learner, batch)
    for name, p in learner.net.named_parameters():
        torch.testing.assert_close(p.grad, numeric[name], rtol=1e-5, atol=1e-7, msg=name)


def test_first_order_drops_the_second_order_term(float64):
    """FOMAML's meta-gradient is the query gradient at the adapted parameters (closed form)."""
    learner = make_learner(algorithm="fomaml", mode="none", hidden=(4, 3), lr=0.1)
    second = make_learner(algorithm="maml", mode="none", hidden=(4, 3), lr=0.1)
    batch = sinusoid_batch(n_tasks=1)
    batch = type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )
    learner.meta_objective(batch)[0].backward()
    # Closed form: adapt by hand, then differentiate the query loss w.r.t. the adapted copy.
    net = learner.net
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    from torch.func import functional_call

    def loss(p, x, y):
        (out,) = functional_call(net, p, (x,))
        return (out - y).square().mean()

    g = torch.autograd.grad(
        loss(params, batch.support_x[0], batch.support_y[0]), list(params.values())
    )
    adapted = {
        k: (v - 0.1 * gi).detach().requires_grad_()
        for (k, v), gi in zip(params.items(), g, strict=True)
    }
    expected = torch.autograd.grad(
        loss(adapted, batch.query_x[0], batch.query_y[0]), list(adapted.values())
    )
    for (name, p), e in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, msg=name)
    second.meta_objective(batch)[0].backward()
    differs = [
        not torch.allclose(p.grad, q.grad)
        for p, q in zip(net.parameters(), second.net.parameters(), strict=True)
    ]
    assert any(differs), "second order must differ from first order"


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in ("auto", "batched")])
def test_strategies_agree(strategy):
    batch = sinusoid_batch(n_tasks=4)
    ref = make_learner(strategy="batched", steps=2)
    other = make_learner(strategy=strategy, steps=2)
    la, ta = ref.meta_objective(batch)
    lb, tb = other.meta_objective(batch)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(ta["co"], tb["co"])
    for p, q in zip(ref.net.parameters(), other.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
