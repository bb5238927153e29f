"""ResNet-12, DropBlock, the ResNet-12 co-learner, and ResNet-12 under the engine's inner loop.

Structure is tested on narrow widths and small images; full-size counts need no forward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmlearn import CmlearnError
from cmlearn.app.config import Config
from cmlearn.app.train import make_optimizer, outer_step
from cmlearn.core.models import Cooperative, ResNet12, build_colearner, parameter_counts
from cmlearn.core.models.layers import Conv2d, StepBatchNorm2d, matmul_conv2d
from cmlearn.core.models.resnet import DropBlock, ResBlock
from cmlearn.core.registry import COLEARNERS, MODELS
from tests.test_models import image_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = (4, 6, 8, 10)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_params(cin: int, cout: int, skip: bool = True) -> int:
    """Three bias-free 3×3 convs and their BatchNorms (γ, β), plus a 1×1 conv + BN shortcut."""
    convs = 9 * cin * cout + 2 * 9 * cout * cout + 3 * 2 * cout
    return convs + (cin * cout + 2 * cout if skip else 0)


@pytest.mark.parametrize(
    ("widths", "total"),
    [((64, 160, 320, 640), 12_427_525), ((64, 128, 256, 512), 7_999_365)],
)
def test_resnet12_parameter_count_matches_the_hand_formula(widths, total):
    cins = (3, *widths[:-1])
    body = sum(block_params(a, b) for a, b in zip(cins, widths, strict=True))
    head = widths[-1] * 5 + 5
    assert body + head == total  # the formula, against the numbers stated in docs/models.md
    for size in (84, 32):  # the global average pool makes the head size-free
        counts = parameter_counts(Cooperative(ResNet12(3, 5, size, widths)))
        assert (counts["body"], counts["head"], counts["test"]) == (body, head, total)
    no_lsc = ResNet12(3, 5, 32, widths, skip_last=True)
    assert n_params(no_lsc) == total - widths[2] * widths[3] - 2 * widths[3]
    assert no_lsc.body.block4.shortcut is None and no_lsc.body.block3.shortcut is not None


@pytest.mark.parametrize(("size", "side"), [(84, 5), (32, 2)])
def test_resnet12_body_and_head_shapes(size, side):
    model = ResNet12(3, 5, size, TINY)
    assert [name for name, _ in model.body.named_children()] == [f"block{i}" for i in range(1, 5)]
    x = torch.randn(2, 3, size, size)
    net = Cooperative(model)
    assert net.point == "block4"
    assert tuple(net.features(x).shape) == (2, TINY[-1], side, side)
    assert tuple(model(x).shape) == (2, 5)
    assert [type(m) for m in model.head] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    with pytest.raises(ValueError, match="too small"):
        ResNet12(3, 5, 15, TINY)


def test_a_block_is_three_conv_bn_layers_a_projected_shortcut_then_leaky_relu_and_pool():
    """Against the definition written out with functional ops: no activation after the third
    BatchNorm before the add; transductive BN (batch statistics)."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 8, 8)

    def bn(t: torch.Tensor, m: nn.Module) -> torch.Tensor:
        return F.batch_norm(t, None, None, m.weight, m.bias, training=True)

    def act(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.1)

    for skip in (True, False):
        block = ResBlock(2, 4, skip=skip)
        with torch.no_grad():  # non-trivial γ, β so that every BatchNorm is seen
            for m in block.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        out = act(bn(F.conv2d(x, block.conv1.weight, padding=1), block.bn1))
        out = act(bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2))
        out = bn(F.conv2d(out, block.conv3.weight, padding=1), block.bn3)
        if skip:
            out = out + bn(F.conv2d(x, block.shortcut[0].weight), block.shortcut[1])
        expected = F.max_pool2d(act(out), 2)
        torch.testing.assert_close(block(x), expected)
        assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))
        block.eval()  # transductive: eval mode normalises with the batch's statistics too
        torch.testing.assert_close(block(x), expected)


def test_initialisation_is_kaiming_fan_out_and_unit_batchnorm():
    torch.manual_seed(0)
    block = ResBlock(64, 64)
    for conv in (block.conv2, block.conv3):
        std = (2.0 / (64 * 9)) ** 0.5  # fan_out = cout·k², leaky_relu gain at slope 0
        assert conv.weight.std().item() == pytest.approx(std, rel=0.05)
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4 and not any(m.track_running_stats for m in bns)
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)


def test_batchnorm_modes_and_per_step_rows_share_conv4s_helper():
    class Source:
        input_shape, out_features = (3, 32, 32), 5

    build = MODELS.get("resnet12").build
    options = MODELS.make_options("resnet12", {"widths": list(TINY)})
    steps = build(options, Source(), 3)
    bns = [m for m in steps.modules() if isinstance(m, StepBatchNorm2d)]
    assert len(bns) == 16 and bns[-1].weight.shape == (3, TINY[-1])
    running = build(MODELS.make_options("resnet12", {"widths": TINY, "bn": "running"}), Source())
    assert all(m.track_running_stats for m in running.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(CmlearnError, match="4 block widths"):
        MODELS.make_options("resnet12", {"widths": [8, 8, 8]})
    with pytest.raises(CmlearnError, match="drop_rate"):
        MODELS.make_options("resnet12", {"drop_rate": 1.0})


def test_dropblock_off_is_the_identity():
    x = torch.randn(2, 3, 6, 6)
    assert DropBlock(0.0, 5)(x) is x
    on = DropBlock(0.5, 3).eval()
    assert on(x) is x  # only active in training mode
    model = ResNet12(1, 3, 32, TINY)  # drop_rate 0 by default
    assert all(m.rate == 0.0 for m in model.modules() if isinstance(m, DropBlock))


def test_dropblock_zeroes_whole_blocks_and_rescales_the_rest():
    drop = DropBlock(0.3, 3)
    x = torch.ones(4, 2, 12, 12)
    torch.manual_seed(0)
    out = drop(x)
    zero = (out == 0).float()
    kept = int((out != 0).sum())
    assert 0.1 < zero.mean().item() < 0.5
    # every kept value is scaled by all / kept, so the sum is preserved exactly
    torch.testing.assert_close(out[out != 0], torch.full((kept,), x.numel() / kept))
    assert out.sum().item() == pytest.approx(x.numel(), rel=1e-5)
    # every dropped pixel lies in a 3×3 square that is dropped whole
    whole = -F.max_pool2d(-zero, 3, stride=1)  # 1 where a 3×3 window is all zero
    assert torch.equal(F.max_pool2d(F.pad(whole, (2, 2, 2, 2)), 3, stride=1), zero)
    # seeded from torch's global generator; gradients flow through the kept entries only
    torch.manual_seed(0)
    y = x.clone().requires_grad_()
    again = drop(y)
    assert torch.equal(again, out)
    again.sum().backward()
    torch.testing.assert_close(y.grad, out)
    assert not torch.equal(drop(x), out)  # a fresh draw


def test_dropblock_clamps_the_block_to_small_maps():
    """At 32 px ResNet-12's last map is 2×2: a 5×5 block becomes the whole channel."""
    torch.manual_seed(1)
    out = DropBlock(0.5, 5)(torch.ones(8, 16, 2, 2))
    per_channel = out.flatten(2)
    assert bool((per_channel.amax(2) == per_channel.amin(2)).all())  # all or nothing
    assert 0 < int((per_channel.amax(2) == 0).sum()) < 8 * 16


def test_resnet_with_dropblock_is_random_in_training_only():
    torch.manual_seed(0)
    model = ResNet12(1, 3, 32, TINY, drop_rate=0.2)
    x = torch.randn(4, 1, 32, 32)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("side", "pool"), [(5, "avg"), (2, "avg"), (5, "max"), (2, "max")])
def test_resnet_colearner_count_matches_the_hand_formula(side, pool):
    """Two 640→640 bias-free 3×3 convs with BN, then the pool and a 5-way linear layer."""
    c = 640
    convs = 2 * (9 * c * c + 2 * c)
    flat = c if pool == "avg" else c * (side // 2) ** 2
    co = COLEARNERS.get("resnet").build(
        COLEARNERS.make_options("resnet", {"pool": pool}), (c, side, side), 5
    )
    assert n_params(co) == convs + flat * 5 + 5
    if pool == "avg":
        assert n_params(co) == 7_378_565  # the number in the co-learner's docstring


def test_resnet_colearner_structure_width_and_the_conv_colearners_avg_pool():
    options = COLEARNERS.make_options("resnet", {"width": 3})
    co = COLEARNERS.get("resnet").build(options, (TINY[-1], 2, 2), 5)
    kinds = [type(m) for m in co[0]] + [type(m) for m in co[1]]
    assert kinds == [Conv2d, nn.BatchNorm2d, nn.LeakyReLU] * 2
    assert co[0][0].bias is None and co[0][2].negative_slope == 0.1
    assert [type(m) for m in co[2:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    w, c = 3, TINY[-1]
    assert n_params(co) == 9 * c * w + 9 * w * w + 2 * 2 * w + w * 5 + 5
    assert tuple(co(torch.randn(4, c, 2, 2)).shape) == (4, 5)
    # the Conv-4 co-learner on ResNet's map: a global average pool makes its FC size-free
    for side in (5, 2):
        conv = build_colearner((c, side, side), 5, conv_layers=2, pool="avg")
        assert n_params(conv) == 2 * (9 * c * c + c + 2 * c) + c * 5 + 5
        assert tuple(conv(torch.randn(3, c, side, side)).shape) == (3, 5)
    with pytest.raises(ValueError, match="too small"):
        build_colearner((c, 1, 1), 5, conv_layers=2)  # a 2×2 max-pool needs a 2×2 map


def resnet_learner(algorithm: str = "maml", steps: int = 2, first_order: bool = False, **model):
    """A learner built by the library from a ResNet-12 config (1×16×16, 5-way, no data)."""
    from cmlearn.app.build import build_learner

    cfg = Config().apply(
        [
            ("model.name", "resnet12"),
            ("model.widths", TINY),
            *((f"model.{k}", v) for k, v in model.items()),
            ("colearner.head.name", "resnet"),
            ("colearner.mode", "cml"),
            ("colearner.gamma", 1.0),
            ("algorithm", algorithm),
            ("inner.lr", 0.3),
            ("inner.steps", steps),
            ("inner.first_order", first_order),
        ]
    )

    class Source:
        input_shape, out_features, loss = (1, 16, 16), 5, "ce"

        def sample(self, n_tasks: int, gen, split: str = "train"):
            return resnet_tasks(n_tasks, 0)

    return build_learner(cfg, Source())


def resnet_tasks(n_tasks: int, seed: int):
    return image_tasks(n_tasks=n_tasks, ways=5, shots=1, queries=2, size=16, seed=seed)


def meta_grads(learner) -> dict[str, torch.Tensor]:
    loss, _ = learner.meta_objective(resnet_tasks(2, 1))
    params = dict(learner.net.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


def test_two_second_order_inner_steps_through_every_layer_shortcut_included():
    torch.manual_seed(0)
    learner = resnet_learner()
    assert learner.strategy == "loop"
    # the shortcut is an ordinary body parameter: adapted in the inner loop (unlike BOIL's code)
    for name in ("model.body.block1.shortcut.0.weight", "model.body.block4.shortcut.1.weight"):
        assert name in learner.step_sizes
    assert not any(k.startswith("colearner.") for k in learner.step_sizes)  # ϕ: outer loop only
    grads = meta_grads(learner)
    for name, g in grads.items():
        assert bool(torch.isfinite(g).all()), name
        assert g.abs().sum() > 0, name
    first = meta_grads(resnet_learner(first_order=True))
    body = [k for k in grads if k.startswith("model.body.")]
    assert any(not torch.allclose(grads[k], first[k]) for k in body)  # second order is kept


@pytest.mark.parametrize("algorithm", ["maml", "boil", "mamlpp"])
def test_resnet_trains_and_evaluates_with_every_update_rule(algorithm):
    learner = resnet_learner(algorithm, drop_rate=0.1 if algorithm == "maml" else 0.0)
    if algorithm == "mamlpp":
        assert learner.rows() == 2
    before = {k: v.detach().clone() for k, v in learner.net.named_parameters()}
    result = outer_step(learner, make_optimizer(learner, Config()), resnet_tasks(2, 2), 0.5)
    assert torch.isfinite(torch.tensor(result.loss))
    after = dict(learner.net.named_parameters())
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("conv1.weight"))
    for mode in ("cml", "cml-dagger", "cml-dagger-code"):
        acc = learner.evaluate(resnet_tasks(2, 3), mode)["accuracy"]
        assert acc.shape == (2,) and bool(((acc >= 0) & (acc <= 1)).all())


# ---- the CPU im2col-matmul path of wide convolutions at few pixels ---------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "bias", "side"),
    [
        (3, 1, 1, 1, False, 2),
        (3, 1, 1, 1, True, 5),
        (1, 1, 0, 1, False, 4),
        (3, 2, 1, 1, True, 5),
        (3, 1, 2, 2, False, 4),
        (2, 1, 0, 1, True, 3),
    ],
)
def test_matmul_conv_is_f_conv2d_with_first_and_second_derivatives(
    kernel, stride, padding, dilation, bias, side
):
    conv = Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    conv = conv.double()
    x = torch.randn(2, 3, side, side, dtype=torch.float64, requires_grad=True)
    b = conv.bias if bias else None
    torch.testing.assert_close(
        matmul_conv2d(x, conv.weight, b, conv),
        F.conv2d(x, conv.weight, b, stride, padding, dilation),
        rtol=1e-12,
        atol=1e-12,
    )
    inputs = (x, conv.weight) + ((conv.bias,) if bias else ())

    def f(x, w, b=None):
        return matmul_conv2d(x, w, b, conv)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_only_wide_cpu_convolutions_at_few_output_pixels_take_the_matmul_path(monkeypatch):
    calls = []
    import cmlearn.core.models.layers as layers

    real = layers.matmul_conv2d
    monkeypatch.setattr(layers, "matmul_conv2d", lambda *a: calls.append(a[0].shape) or real(*a))
    wide, narrow = Conv2d(256, 2, 3, padding=1), Conv2d(255, 2, 3, padding=1)
    for side, expected in ((5, True), (6, False), (1, True)):
        calls.clear()
        x = torch.randn(2, 256, side, side)
        out = wide(x)
        assert bool(calls) is expected, side
        torch.testing.assert_close(out, F.conv2d(x, wide.weight, wide.bias, padding=1))
    assert wide(torch.randn(0, 256, 2, 2)).shape == (0, 2, 2, 2)  # an empty batch too
    calls.clear()
    narrow(torch.randn(2, 255, 2, 2))
    Conv2d(256, 2, 3, padding=1, groups=2)(torch.randn(2, 256, 2, 2))
    Conv2d(256, 2, 3, padding=1)(torch.randn(256, 2, 2))  # unbatched: nn.Conv2d's own path
    assert calls == []
    # 2×2 → 1×1 with a stride-2 3×3: one output pixel
    calls.clear()
    Conv2d(256, 2, 3, stride=2, padding=1)(torch.randn(1, 256, 2, 2))
    assert calls == [torch.Size([1, 256, 2, 2])]
    calls.clear()  # under vmap over tasks oneDNN is faster: the matmul path is not taken
    x = torch.randn(3, 2, 256, 2, 2)
    out = torch.func.vmap(wide)(x)
    assert calls == []
    torch.testing.assert_close(out, torch.stack([wide(t) for t in x]))
    assert len(calls) == 3


def test_the_resnet_meta_gradient_is_the_same_on_either_convolution_path(monkeypatch):
    widths = (4, 6, 8, 256)  # the last block is wide enough for the matmul path at 2×2 pixels
    grads = {}
    for pixels in (0, 25):
        monkeypatch.setattr(Conv2d, "matmul_max_pixels", pixels)
        torch.manual_seed(0)
        learner = resnet_learner(widths=widths)
        grads[pixels] = meta_grads(learner)
    # float32 rounding of a second-order gradient whose entries reach the hundreds, no more
    scale = torch.cat([g.flatten() for g in grads[0].values()]).norm()
    for name, g in grads[0].items():
        assert (grads[25][name] - g).norm() <= 1e-5 * scale, name


# ---- activation checkpointing of the inner loop ---------------------------------------------


def test_checkpointed_resnet_inner_loop_same_gradient_less_memory():
    """Three second-order steps through ResNet-12 with DropBlock: recomputing each step in
    the backward replays its random blocks (the same gradient) and stores far less."""
    import dataclasses

    from cmlearn.app.bench.suite import saved_mib

    grads, memory = {}, {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        learner = resnet_learner(steps=3, drop_rate=0.1)
        learner.rule = dataclasses.replace(learner.rule, checkpoint=ckpt)
        torch.manual_seed(1)
        grads[ckpt] = meta_grads(learner)
        data = resnet_tasks(2, 1)
        memory[ckpt] = saved_mib(lambda learner=learner, data=data: learner.meta_objective(data)[0])
    scale = torch.cat([g.flatten() for g in grads[False].values()]).norm()
    for name, g in grads[False].items():
        assert (grads[True][name] - g).norm() <= 1e-5 * scale, name
    assert memory[True] < 0.6 * memory[False], memory


def test_checkpointing_refuses_running_batchnorm_statistics():
    from cmlearn.app.build import build_learner

    cfg = Config().apply(
        [("model.name", "resnet12"), ("model.widths", TINY), ("model.bn", "running"),
         ("inner.checkpoint", True)]
    )  # fmt: skip

    class Source:
        input_shape, out_features, loss = (1, 16, 16), 5, "ce"

    with pytest.raises(CmlearnError, match="running statistics of model.body.block1.bn1 more"):
        build_learner(cfg, Source())
    build_learner(cfg.apply([("inner.first_order", True)]), Source())  # nothing is recomputed
