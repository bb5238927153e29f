"""The lean hot path: the pure form of the MLP family against ``functional_call``, and the
operator counts and goals that ``cmlearn bench`` reports for it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from cmlearn.app.bench import suite as bench
from cmlearn.core.engine import Learner, module_forward
from cmlearn.core.models import MLP, Cooperative, TaskLinear, build_colearner
from tests.conftest import make_learner, sinusoid_batch
from tests.test_graph_models import config, source
from tests.test_models import conv_learner


def general(learner: Learner) -> Learner:
    """The same learner on the general path (``functional_call``)."""
    return dataclasses.replace(learner, pure=False)


def outcome(learner: Learner, batch) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Meta-loss, per-task terms and meta-gradients of one meta-step (gradients cleared)."""
    loss, terms = learner.meta_objective(batch)
    loss.backward()
    values = [loss.detach()]
    for p in learner.net.parameters():
        values.append(torch.zeros_like(p) if p.grad is None else p.grad.clone())
        p.grad = None
    for size in learner.step_sizes.values():
        if size.grad is not None:
            values.append(size.grad.clone())
            size.grad = None
    return values, {k: v.detach() for k, v in terms.items()}


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop"])
@pytest.mark.parametrize("mode", ["none", "cml", "random", "cl"])
@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "anil", "mamlpp"])
def test_pure_path_is_bit_identical_to_functional_call(algorithm, mode, strategy):
    learner = make_learner(algorithm=algorithm, mode=mode, strategy=strategy, steps=2)
    assert learner.forward is not None and learner.forward.__name__ == "forward"  # the pure form
    batch = sinusoid_batch(n_tasks=4)
    pure, pure_terms = outcome(learner, batch)
    fcall, fcall_terms = outcome(general(learner), batch)
    assert len(pure) == len(fcall)
    for a, b in zip(pure, fcall, strict=True):
        assert torch.equal(a, b)
    assert pure_terms.keys() == fcall_terms.keys()
    for key, value in pure_terms.items():
        assert torch.equal(value, fcall_terms[key]), key


@pytest.mark.parametrize("mode", ["cml-dagger", "cml-dagger-code", "cml"])
def test_pure_path_evaluates_as_functional_call(mode):
    learner = make_learner(mode="cml", steps=2)
    batch = sinusoid_batch(n_tasks=5, seed=3)
    a = learner.evaluate(batch, mode, return_outputs=True)
    b = general(learner).evaluate(batch, mode, return_outputs=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pure_forward_equals_functional_call_on_partial_parameter_dicts():
    """Names missing from the dict are the module's own, as in ``functional_call``."""
    torch.manual_seed(0)
    net = Cooperative(MLP(2, (5, 4), 3), build_colearner((4,), 3, (6,)))
    forward = net.pure_forward()
    assert forward is not None
    x = torch.randn(3, 7, 2)
    own = dict(net.named_parameters())
    tasked = {k: v.expand(3, *v.shape) + 0.1 for k, v in own.items() if k.startswith("model.")}
    for params, inputs in (
        (tasked, x),
        ({}, x[0]),
        ({"model.head.bias": own["model.head.bias"]}, x),
        (tasked, x.unsqueeze(2)),  # [T, n, 1, in]: per-task weights on more than one lead dim
    ):
        for heads in (("meta",), ("co",), ("meta", "co"), ("co", "meta")):
            ours = forward(params, inputs, heads)
            theirs = functional_call(net, params, (inputs,), {"heads": heads})
            assert len(ours) == len(heads)
            for a, b in zip(ours, theirs, strict=True):
                assert torch.equal(a, b)


def test_cml_with_gamma_zero_equals_maml_on_the_pure_path():
    batch = sinusoid_batch(n_tasks=4)
    maml, _ = outcome(make_learner(mode="none", steps=2), batch)
    learner = make_learner(mode="cml", gamma=0.0, steps=2)
    cml, _ = outcome(learner, batch)
    names = [k for k, _ in learner.net.named_parameters()]
    meta = [g for k, g in zip(names, cml[1:], strict=True) if not k.startswith("colearner.")]
    assert torch.equal(maml[0], cml[0])
    for a, b in zip(maml[1:], meta, strict=True):
        assert torch.equal(a, b)


def test_models_without_a_pure_form_take_the_general_path():
    from cmlearn.app.build import build_learner

    for learner in (conv_learner(), build_learner(config("gmeta", "cml"), source())):
        assert learner.net.pure_forward() is None
        assert learner.forward.__qualname__ == module_forward(learner.net).__qualname__


class ScaledLinear(TaskLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_no_pure_form_where_it_could_differ():
    def net() -> Cooperative:
        torch.manual_seed(0)
        return Cooperative(MLP(1, (4, 4), 1), build_colearner((4,), 1, (3,)))

    assert net().pure_forward() is not None
    subclass = net()
    subclass.model.head = ScaledLinear(4, 1)  # may override forward
    inplace, tied = net(), net()
    inplace.model.body.relu1 = nn.ReLU(inplace=True)
    tied.model.body.fc2.bias = tied.model.body.fc1.bias
    for case in (subclass, inplace, tied):
        assert case.pure_forward() is None


@pytest.mark.parametrize("where", ["colearner.fc1", "model.head", ""])
def test_hooks_run_whenever_they_are_registered(where):
    """A hooked model runs through ``functional_call`` (which runs the hooks), even when the
    hook comes after the learner was built, and the pure form again once it is removed."""
    learner = make_learner(mode="cml")
    batch = sinusoid_batch()
    expected = outcome(general(learner), batch)[0]
    seen = []
    module = learner.net.get_submodule(where)
    handle = module.register_forward_pre_hook(lambda *_: seen.append(1))
    hooked = outcome(learner, batch)[0]
    assert seen
    handle.remove()
    seen.clear()
    again = outcome(learner, batch)[0]
    assert not seen
    for a, b, c in zip(expected, hooked, again, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_a_replaced_parameter_is_seen():
    """``Learner.params`` and the pure form read the modules' attributes at call time."""
    learner = make_learner(mode="cml")
    batch = sinusoid_batch()
    before = learner.meta_objective(batch)[0].item()
    with torch.no_grad():
        head = learner.net.model.head
        head.weight = nn.Parameter(head.weight + 1.0)
        co = learner.net.colearner.out
        co.bias = nn.Parameter(co.bias + 1.0)
    assert learner.params()["model.head.weight"] is head.weight
    after = learner.meta_objective(batch)[0]
    torch.testing.assert_close(after, general(learner).meta_objective(batch)[0], rtol=0, atol=0)
    assert after.item() != before


# --------------------------------------------------------------------------- bench entries


def test_op_calls_count_a_meta_step():
    setup = bench.sinusoid_setup(4, co=False)
    counts = {
        impl: bench.op_calls(bench.meta_step(bench.objective_of(setup, "none", impl), setup))
        for impl in ("engine-batched", "engine-batched-fcall", "reference")
    }
    for count in counts.values():
        assert count["total"] == sum(count["by_op"].values()) > 0
    # the same kernels either way: swapping parameters in is Python, not operator calls
    assert counts["engine-batched"] == counts["engine-batched-fcall"]
    assert counts["reference"]["total"] > 2 * counts["engine-batched"]["total"]
    assert counts["engine-batched"]["by_op"]["baddbmm"] == 6  # 3 layers, support and query


def test_sinusoid_bench_reports_the_op_bound_and_hot_path_goals():
    res = bench.Results(bench.Plan(1, 0, dict.fromkeys(bench.QUICK_STEPS, 1)))
    threads = torch.get_num_threads()
    try:
        bench.bench_sinusoid(res, 4, 1)
    finally:
        torch.set_num_threads(threads)
    names = {r["name"] for r in res.rows}
    assert {"sinusoid_b4/engine-batched-fcall/maml", "sinusoid_b4/engine-batched/cml"} <= names
    assert {r["strategy"] for r in res.rows if "fcall" in r["impl"]} <= {"batched", "per-task"}
    ops = res.ops
    assert set(ops) == {
        f"sinusoid_b4/{impl}/{label}"
        for label, impl in (
            ("maml", "engine-batched"),
            ("maml", "engine-batched-fcall"),
            ("maml", "reference"),
            ("cml", "engine-batched"),
        )
    }
    total = {k: v["total"] for k, v in ops.items()}
    bound = total["sinusoid_b4/reference/maml"] / total["sinusoid_b4/engine-batched/maml"]
    assert res.ratios["sinusoid_b4_op_bound"] == bound
    assert res.ratios["sinusoid_b4_bound_gap"] == bound / res.ratios["sinusoid_b4_speedup"]
    assert res.ratios["cml_op_ratio"] > 1
    for key in ("sinusoid_b4_pure_speedup", "cml_overhead", "cml_overhead_fcall"):
        assert res.ratios[key] > 0
    speed = res.goals["sinusoid_b4_speedup"]
    assert speed["value"] == res.ratios["sinusoid_b4_speedup"] and "op-count bound" in speed["goal"]
    parts = speed["parts"]
    assert speed["met"] == (parts["speedup"]["met"] and parts["bound_gap"]["met"])
    assert parts["bound_gap"]["value"] == res.ratios["sinusoid_b4_bound_gap"]
    assert res.goals["cml_overhead"]["goal"] == "<= 1.1"
    text = "\n".join(bench.goal_lines(res.goals))
    assert "sinusoid_b4_speedup" in text and "cml_overhead" in text
