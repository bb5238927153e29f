"""The engine on a conv net with BatchNorm and on a graph model fed node indices."""

from __future__ import annotations

import pytest
import torch

from cmlearn.core.algorithms import InnerRule
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.models import ConvNet, Cooperative, build_colearner
from cmlearn.core.tasks import TaskBatch


def image_tasks(n_tasks=3, ways=3, shots=2, queries=3, size=8, seed=0) -> TaskBatch:
    """Synthetic N-way tasks: each class is a random prototype image plus noise."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_tasks, ways, 1, size, size, generator=g)

    def draw(k):
        x = proto.unsqueeze(2) + 0.3 * torch.randn(n_tasks, ways, k, 1, size, size, generator=g)
        y = torch.arange(ways).view(1, ways, 1).expand(n_tasks, ways, k)
        return x.flatten(1, 2), y.flatten(1)

    return TaskBatch(*draw(shots), *draw(queries))


def conv_learner(strategy="loop", bn="transductive", mode="cml", seed=0) -> Learner:
    torch.manual_seed(seed)
    model = ConvNet(1, 3, 8, channels=4, blocks=2, bn=bn)
    shape = Cooperative(model).features(torch.zeros(2, 1, 8, 8)).shape[1:]
    co = build_colearner(shape, 3, conv_layers=1, bn=bn) if mode != "none" else None
    net = Cooperative(model, co)
    rule = InnerRule(steps=1, lr=0.4)
    return Learner.create(net, rule, CoLearnerSpec(mode, 0.5), "ce", strategy)


def test_conv_bn_strategies_agree():
    batch = image_tasks()
    a, b = conv_learner("loop"), conv_learner("vmap")
    la, ta = a.meta_objective(batch)
    lb, tb = b.meta_objective(batch)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    assert ta["accuracy"].shape == (3,)


def test_conv_cml_meta_training_learns_synthetic_images():
    learner = conv_learner()
    opt = torch.optim.Adam(learner.net.parameters(), lr=3e-3)
    test = image_tasks(n_tasks=20, seed=123)
    before = learner.evaluate(test)["accuracy"].mean()
    for step in range(60):
        loss, _ = learner.meta_objective(image_tasks(n_tasks=4, seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = learner.evaluate(test)["accuracy"].mean()
    assert after > before + 0.1 and after > 0.6


def test_transductive_bn_keeps_no_running_statistics():
    learner = conv_learner(bn="transductive")
    assert all(
        len(list(m.buffers())) == 0
        for m in learner.net.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_running_bn_updates_buffers_and_changes_eval():
    learner = conv_learner(bn="running")
    bn = learner.net.model.body.conv1[1]
    before = bn.running_mean.clone()
    learner.meta_objective(image_tasks())[0].backward()
    assert not torch.equal(before, bn.running_mean)
    batch = image_tasks(seed=5)
    learner.net.train()
    train_mode = learner.evaluate(batch)["loss"]
    learner.net.eval()
    eval_mode = learner.evaluate(batch)["loss"]
    assert not torch.allclose(train_mode, eval_mode)


def test_running_bn_requires_the_loop_strategy():
    from cmlearn import CmlearnError
    from cmlearn.app.config import Config
    from cmlearn.core.engine import resolve_strategy

    cfg = Config().override(["model.name=conv4", "model.bn=running", "train.strategy=vmap"])
    with pytest.raises(CmlearnError, match="loop"):
        resolve_strategy(cfg.train.strategy, conv_learner(bn="running").net)


def test_pooled_blocks_pool_before_the_relu_with_the_same_derivatives_bit_for_bit():
    """max-pool and ReLU commute: the faster order gives the same meta-gradient, exactly."""
    batch = image_tasks()
    fast = conv_learner(mode="cml")
    slow = conv_learner(mode="cml")  # same seed: same weights; rebuilt in the textbook order
    swapped = 0
    for block in slow.net.modules():
        if isinstance(block, torch.nn.Sequential) and isinstance(block[-1], torch.nn.ReLU):
            if len(block) == 4 and isinstance(block[2], torch.nn.MaxPool2d):
                block[2], block[3] = block[3], block[2]
                swapped += 1
    assert swapped == 2  # conv1 of the body and the co-learner's pooled block
    for learner in (fast, slow):
        loss, _ = learner.meta_objective(batch)
        loss.backward()
    for p, q in zip(fast.net.parameters(), slow.net.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    x = batch.query_x[0][:2].clone().requires_grad_()
    outs = [learner.net.model(x).square().sum() for learner in (fast, slow)]
    g = [torch.autograd.grad(o, x, create_graph=True)[0] for o in outs]
    assert torch.equal(g[0], g[1])
    gg = [torch.autograd.grad(gi.square().sum(), x)[0] for gi in g]
    assert torch.equal(gg[0], gg[1])


@pytest.mark.parametrize(("size", "side"), [(28, 3), (32, 4)])
def test_conv4_last_map_side(size: int, side: int) -> None:
    """The body's last map is 3×3 at 28 px (the head's 2×2 pool reads its top-left 2×2) and
    4×4 at 32 px (``omniglot-5w1s-32px-cpu``: the pool reads all of it)."""
    from cmlearn.app.config import get_preset

    net = Cooperative(ConvNet(1, 5, size, channels=4), None)
    assert tuple(net.features(torch.zeros(2, 1, size, size)).shape) == (2, 4, side, side)
    cfg = get_preset("omniglot-5w1s-32px-cpu")
    assert cfg.data.options.image_size == 32
    base = get_preset("omniglot-5w1s-cpu").to_dict()
    other = cfg.to_dict()
    for c in (base, other):
        c.pop("preset")
        c["data"]["options"].pop("image_size", None)
    assert base == other
