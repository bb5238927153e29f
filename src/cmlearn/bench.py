"""Speed and memory benchmarks: the engine against a plain per-task reference loop.

Every figure is a ratio against a reference measured in the same process, so it says how much
the engine's task-batched formulation buys, not how fast this machine is. The reference is the
inner loop as the official MAML/CML code writes it: for each task, a support loss through an
explicit ``F.linear``/``F.conv2d`` forward of the meta-parameters, ``autograd.grad`` with
``create_graph``, adapted parameters ``p - α g``, a query loss; then the mean over tasks and one
``backward``. A second reference runs the same loop through ``torch.func.functional_call`` on
the ``nn.Module`` (the module-swapping style of torchmeta / learn2learn).

Timings are medians over repeats; each repeat times a fixed number of meta-steps (forward,
backward, gradients cleared; no optimiser step on either side) after a warm-up, and the
variants compared with each other are interleaved repeat by repeat (in alternating order) so
that drift on a shared machine hits them alike. Memory is the bytes of the distinct storages
autograd saves for backward during one meta-step's forward (``saved_tensors_hooks``): CPU has
no allocator statistics, and these tensors are what the meta-gradient keeps alive.

At meta-batch 4 the sinusoid step is mostly a fixed cost per operator call, so the bench also
counts the aten operator calls of one meta-step of each side (``torch.profiler``): their ratio
is the speed-up the engine would reach at the reference's cost per call, the bound that its
measured speed-up is judged against.

On real Omniglot (the ``omniglot-5w1s-cpu`` preset, built as ``cmlearn train`` builds it) the
bench also reports a meta-step's achieved FLOP/s (counted by ``FlopCounterMode``) over a large
matmul's, the tensor-indexing sampler against a per-image decode pipeline, and CML's overhead,
each with the goal it was asked to meet; without the data these entries are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import random
import statistics
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from cmlearn import CmlearnError
from cmlearn.algorithms.rule import InnerRule, Params, group_of
from cmlearn.build import build_learner, build_source
from cmlearn.cml import CoLearnerSpec
from cmlearn.config import Config
from cmlearn.data.omniglot import zip_paths
from cmlearn.engine import Learner
from cmlearn.models import MLP, ConvNet, Cooperative, TaskLinear, build_colearner
from cmlearn.presets import get_preset
from cmlearn.runtime import Runtime
from cmlearn.tasks import ClassificationSource, SinusoidFamily, TaskBatch
from cmlearn.tasks.batch import generator, split_queries
from cmlearn.train import make_optimizer, outer_step

LR = 0.01  # inner step size α (one second-order step everywhere)
GAMMA = 0.2  # CML co-learner loss scale γ
N_WAY, QUERIES_PER_CLASS, IMAGE = 5, 15, 28
CONV_CHANNELS = 32
# Steps per repeat; the omniglot_* entries after the first are the Omniglot group's variants
# that are far cheaper than a meta-step (matmul, sampler, per-image baseline).
FULL_STEPS = {
    "sinusoid_b4": 20,  # times REPEAT_FACTOR
    "sinusoid_b25": 40,
    "conv_b4": 8,
    "omniglot": 3,
    "omniglot_matmul": 10,
    "omniglot_sample": 40,
    "omniglot_per_image": 3,
}
QUICK_STEPS = {
    "sinusoid_b4": 4,  # times REPEAT_FACTOR
    "sinusoid_b25": 8,
    "conv_b4": 2,
    "omniglot": 1,
    "omniglot_matmul": 4,
    "omniglot_sample": 10,
    "omniglot_per_image": 1,
}
# Workloads timed with this many times the repeats (of fewer steps each). Sinusoid b=4, whose
# ratios are the hot-path goals, interleaves its 8 variants every ~0.5 s, so that a busy
# machine's drift hits them alike: with 200-step repeats one variant's repeat could fall in a
# quiet second and another's in a busy one (CML/MAML read 1.54 in such a run, 1.20 finely).
REPEAT_FACTOR = {"sinusoid_b4": 10}
Forward = Callable[[Cooperative, Params, Tensor, tuple[str, ...]], tuple[Tensor, ...]]


@dataclass(frozen=True)
class Setup:
    """A network and one fixed meta-batch; data generation stays out of the timings."""

    net: Cooperative
    batch: TaskBatch
    loss: str

    @property
    def params(self) -> Params:
        return dict(self.net.named_parameters())


@dataclass(frozen=True)
class Variant:
    """One timed configuration: a meta-step function and the thread count it runs at.

    ``steps`` overrides the workload's steps per repeat, so that variants of very different
    cost (a 5 ms sampler and a 1 s meta-step) are interleaved with comparable timed spans.
    """

    name: str
    step: Callable[[], object]
    n_tasks: int
    info: dict[str, Any]
    threads: int
    steps: int = 0


# --------------------------------------------------------------------------- workloads


def sinusoid_setup(n_tasks: int, co: bool) -> Setup:
    """The 1-40-40-1 regression MLP, K=5 support and 10 query points per task."""
    torch.manual_seed(0)
    colearner = build_colearner((40,), 1, (40,)) if co else None
    net = Cooperative(MLP(1, (40, 40), 1), colearner)
    return Setup(
        net, SinusoidFamily().sample(n_tasks, 5, 10, generator("train", 0, n_tasks)), "mse"
    )


def conv_setup(n_tasks: int, channels: int, co: bool) -> Setup:
    """Conv-4 on synthetic 28×28 images, 5-way 1-shot with 15 queries per class."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(n_tasks)
    n_query = N_WAY * QUERIES_PER_CLASS
    query_y = torch.arange(N_WAY).repeat_interleave(QUERIES_PER_CLASS)
    batch = TaskBatch(
        torch.randn(n_tasks, N_WAY, 1, IMAGE, IMAGE, generator=gen),
        torch.arange(N_WAY).expand(n_tasks, N_WAY).contiguous(),
        torch.randn(n_tasks, n_query, 1, IMAGE, IMAGE, generator=gen),
        query_y.expand(n_tasks, n_query).contiguous(),
    )
    model = ConvNet(1, N_WAY, IMAGE, channels=channels, blocks=4)
    colearner = None
    if co:
        feature = Cooperative(model).features(batch.support_x[0, :1]).shape[1:]
        colearner = build_colearner(feature, N_WAY, conv_layers=2)
    return Setup(Cooperative(model, colearner), batch, "ce")


# --------------------------------------------------------------------------- objectives


def engine_objective(
    setup: Setup, mode: str, strategy: str, pure: bool = True
) -> Callable[[], Tensor]:
    """The engine's meta-loss of the setup's batch (MAML when ``mode`` is ``none``);
    ``pure=False`` runs the model through ``functional_call`` (the path for any model)."""
    rule = InnerRule(steps=1, lr=LR)
    learner = Learner.create(setup.net, rule, CoLearnerSpec(mode, GAMMA), setup.loss, strategy)
    learner = replace(learner, pure=pure)
    return lambda: learner.meta_objective(setup.batch)[0]


def _explicit(module: nn.Module, prefix: str, params: Params, x: Tensor) -> Tensor:
    """``module``'s forward written out in ``torch.nn.functional`` calls on ``params``."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = _explicit(child, f"{prefix}{name}.", params, x)
        return x
    if isinstance(module, TaskLinear | nn.Linear):
        return F.linear(x, params[prefix + "weight"], params[prefix + "bias"])
    if isinstance(module, nn.Conv2d):
        w, b = params[prefix + "weight"], params[prefix + "bias"]
        return F.conv2d(x, w, b, module.stride, module.padding)
    if isinstance(module, nn.BatchNorm2d):  # transductive: this batch's own statistics
        w, b = params[prefix + "weight"], params[prefix + "bias"]
        return F.batch_norm(x, None, None, w, b, training=True, eps=module.eps)
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(x, module.kernel_size)
    if isinstance(module, nn.Flatten):
        return x.flatten(1)
    raise TypeError(f"no explicit forward for {type(module).__name__}")


def explicit_forward(
    net: Cooperative, params: Params, x: Tensor, heads: tuple[str, ...]
) -> tuple[Tensor, ...]:
    """One task's heads, as the official code computes them (no module state swapped)."""
    feature = None
    for name, layer in net.model.body.named_children():
        x = _explicit(layer, f"model.body.{name}.", params, x)
        if name == net.point:
            feature = x
    out = {"meta": _explicit(net.model.head, "model.head.", params, x)}
    if "co" in heads:
        assert net.colearner is not None and feature is not None
        out["co"] = _explicit(net.colearner, "colearner.", params, feature)
    return tuple(out[h] for h in heads)


def module_forward(
    net: Cooperative, params: Params, x: Tensor, heads: tuple[str, ...]
) -> tuple[Tensor, ...]:
    """One task's heads through ``functional_call`` on the module (torchmeta/learn2learn style)."""
    return functional_call(net, params, (x,), {"heads": heads})


def reference_objective(
    setup: Setup, mode: str, forward: Forward, lr: float = LR, gamma: float = GAMMA
) -> Callable[[], Tensor]:
    """The per-task loop: one support pass, one ``autograd.grad`` and one query pass per task.

    ``lr`` and ``gamma`` default to the synthetic workloads' values; the Omniglot benchmark
    passes its preset's.
    """
    params, batch, co = setup.params, setup.batch, CoLearnerSpec(mode, gamma)
    fast = [k for k in params if group_of(k) != "colearner"]  # ϕ is never adapted
    loss_fn = F.mse_loss if setup.loss == "mse" else F.cross_entropy

    def objective() -> Tensor:
        total = torch.zeros(())
        for i in range(batch.n_tasks):
            (out,) = forward(setup.net, params, batch.support_x[i], ("meta",))
            inner = loss_fn(out, batch.support_y[i])
            grads = torch.autograd.grad(inner, [params[k] for k in fast], create_graph=True)
            adapted = dict(params)
            for name, g in zip(fast, grads, strict=True):
                adapted[name] = params[name] - lr * g
            outs = forward(setup.net, adapted, batch.query_x[i], co.heads(inner=False))
            total = total + loss_fn(outs[0], batch.query_y[i])
            if co.active:
                total = total + gamma * loss_fn(outs[1], batch.query_y[i])
        return total / batch.n_tasks

    return objective


def meta_step(objective: Callable[[], Tensor], setup: Setup) -> Callable[[], None]:
    """Forward, backward, and clear the gradients: what every meta-training step pays."""
    params = list(setup.net.parameters())

    def step() -> None:
        objective().backward()
        for p in params:
            p.grad = None

    return step


def check_same(setup: Setup, mode: str, objectives: dict[str, Callable[[], Tensor]]) -> None:
    """Every implementation must compute the same meta-loss, or the comparison is void."""
    losses = {name: obj().detach() for name, obj in objectives.items()}
    first = next(iter(losses.values()))
    for name, value in losses.items():
        torch.testing.assert_close(value, first, rtol=1e-4, atol=1e-5, msg=f"{name} ({mode})")


# --------------------------------------------------------------------------- measuring


def objective_of(setup: Setup, mode: str, impl: str) -> Callable[[], Tensor]:
    """``impl`` is ``engine-<strategy>`` (``-fcall`` appended: through ``functional_call``
    even where the model has a pure form), ``reference`` or ``reference-fcall``."""
    if impl == "reference":
        return reference_objective(setup, mode, explicit_forward)
    if impl == "reference-fcall":
        return reference_objective(setup, mode, module_forward)
    strategy, _, fcall = impl.removeprefix("engine-").partition("-")
    return engine_objective(setup, mode, strategy, pure=not fcall)


def label(mode: str) -> str:
    return "maml" if mode == "none" else mode


def variant(setup: Setup, benchmark: str, mode: str, impl: str, threads: int) -> Variant:
    """A timed meta-step named ``benchmark/impl/algorithm``."""
    strategy = impl.split("-")[1] if impl.startswith("engine-") else "per-task"
    return Variant(
        f"{benchmark}/{impl}/{label(mode)}",
        meta_step(objective_of(setup, mode, impl), setup),
        setup.batch.n_tasks,
        {"benchmark": benchmark, "impl": impl, "strategy": strategy, "co": mode},
        threads,
    )


def time_interleaved(
    variants: list[Variant],
    steps: int,
    repeats: int,
    warmup: int,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per meta-step of each variant, one entry per repeat (``steps`` per repeat
    unless the variant sets its own).

    ``cpu``, when given, receives the process CPU seconds per step as well: at one thread it
    is the work done, without the time other processes held the core (a check on wall-clock
    ratios on a shared machine; at more threads it also counts spinning worker threads).
    """
    for v in variants:
        torch.set_num_threads(v.threads)
        for _ in range(warmup):
            v.step()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            torch.set_num_threads(v.threads)
            n = v.steps or steps
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                v.step()
            times[v.name].append((time.perf_counter() - start) / n)
            if cpu is not None:
                cpu.setdefault(v.name, []).append((time.process_time() - start_cpu) / n)
    return times


def saved_mib(objective: Callable[[], Tensor]) -> float:
    """MiB of distinct storages saved for backward while building one meta-step's graph.

    Saved tensors are kept referenced until counting ends, so a freed storage's address cannot
    be reused and counted twice; views of one storage (expanded parameters) count once.
    """
    sizes: dict[int, int] = {}
    kept: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = objective()
    del loss
    kept.clear()
    return sum(sizes.values()) / 2**20


def op_calls(step: Callable[[], object]) -> dict[str, Any]:
    """The aten operator calls of one ``step`` (a whole meta-step: the meta-loss with its inner
    ``autograd.grad``, then ``backward()``), as ``torch.profiler`` records them.

    Counted: every aten op called from Python or by an autograd backward node; not counted
    again: the ops an aten op runs inside itself (``linear``'s ``t`` and ``addmm``). Each call
    pays the fixed cost (dispatch, autograd bookkeeping, the Python around it) that dominates
    a small meta-step, so the reference's count over the engine's is the speed-up that an
    implementation with the same cost per call would reach. One untimed step runs first, so
    lazy initialisation is not counted.
    """
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    calls = Counter(
        e.name.removeprefix("aten::")
        for e in prof.events()
        if e.name.startswith("aten::")
        and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    )
    return {"total": sum(calls.values()), "by_op": dict(calls.most_common())}


def kernel_split(step: Callable[[], object], steps: int = 2) -> dict[str, float]:
    """The shares of a ``step``'s kernel time spent in convolutions and in everything else
    (BatchNorm, pooling, ReLU, element-wise ops, autograd bookkeeping), by the profiler's self
    time of every op. Shares, not seconds: the profiler's clock is the wall's, which another
    process on the core inflates, so callers scale them by a CPU-time measurement. The
    profiler adds a few microseconds per op to ``other``."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    conv = other = 0.0
    for e in prof.key_averages():
        if "convolution" in e.key:  # aten's forward, backward and double-backward kernels
            conv += e.self_cpu_time_total
        else:
            other += e.self_cpu_time_total
    return {"conv": conv / (conv + other), "other": other / (conv + other)}


@dataclass(frozen=True)
class Plan:
    """How long to time: repeats, warm-up steps, and meta-steps per repeat per workload."""

    repeats: int
    warmup: int
    steps: dict[str, int]


@dataclass
class Results:
    """Raw rows plus the ratios derived from them."""

    plan: Plan
    rows: list[dict] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    goals: dict[str, dict] = field(default_factory=dict)
    ops: dict[str, dict] = field(default_factory=dict)

    def time(
        self,
        variants: list[Variant],
        workload: str,
        repeats: int | None = None,
        warmup: int | None = None,
    ) -> None:
        steps, cpu = self.plan.steps[workload], {}
        if repeats is None:
            repeats = self.plan.repeats * REPEAT_FACTOR.get(workload, 1)
        times = time_interleaved(
            variants,
            steps,
            repeats,
            self.plan.warmup if warmup is None else warmup,
            cpu,
        )
        for v in variants:
            secs = times[v.name]
            rates = [v.n_tasks / s for s in secs]
            self.rows.append(
                {
                    "name": v.name,
                    **v.info,
                    "threads": v.threads,
                    "n_tasks": v.n_tasks,
                    "steps_per_repeat": v.steps or steps,
                    "tasks_per_s": statistics.median(rates),
                    "s_per_step": statistics.median(secs),
                    "tasks_per_s_repeats": rates,
                    "s_per_step_repeats": secs,
                    "cpu_s_per_step": statistics.median(cpu[v.name]),
                    "cpu_s_per_step_repeats": cpu[v.name],
                }
            )

    def measure_memory(self, setup: Setup, benchmark: str, mode: str, impl: str) -> None:
        self.memory.append(
            {
                "name": f"{benchmark}/{impl}/{label(mode)}",
                "benchmark": benchmark,
                "impl": impl,
                "co": mode,
                "saved_MiB": saved_mib(objective_of(setup, mode, impl)),
            }
        )

    def rate(self, name: str) -> float:
        return self.row(name)["tasks_per_s"]

    def per_step(self, name: str, clock: str = "wall") -> float:
        """Median seconds per step by the wall clock, or process CPU seconds (``cpu``)."""
        column = "s_per_step" if clock == "wall" else "cpu_s_per_step"
        return self.row(name)[column]

    def paired(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """Median over repeats of ``numerator``'s seconds over ``denominator``'s in the same
        repeat: the two ran within one repeat's span, so a busy spell on a shared machine
        mostly hits both and cancels, where a ratio of separate medians can pair a quiet
        repeat with a busy one."""
        column = "s_per_step_repeats" if clock == "wall" else "cpu_s_per_step_repeats"
        a, b = self.row(numerator)[column], self.row(denominator)[column]
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    def row(self, name: str) -> dict:
        """The timed variant ``name``'s row."""
        return next(r for r in self.rows if r["name"] == name)

    def mib(self, name: str) -> float:
        return next(m["saved_MiB"] for m in self.memory if m["name"] == name)


def machine() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def busy_cpu_s() -> tuple[float, float] | None:
    """CPU seconds used since boot by all processes and by this one (Linux ``/proc/stat``).

    Their difference over the run is what other processes took from the timed code: on a
    shared machine multi-threaded kernels then wait on descheduled threads and slow down by
    orders of magnitude, so the report flags it.
    """
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]
    own = os.times()
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


# --------------------------------------------------------------------------- the benchmarks

SIN_IMPLS = (
    "engine-batched",
    "engine-batched-fcall",
    "engine-vmap",
    "engine-loop",
    "reference",
    "reference-fcall",
)
# Goals of the lean hot path (sinusoid, meta-batch 4): (comparison, target).
HOT_PATH_GOALS: dict[str, tuple[str, float]] = {
    "sinusoid_b4_speedup": (">=", 3.0),
    "cml_overhead": ("<=", 1.10),
}
BOUND_GAP = 1.3  # the speed-up must come within this factor of the op-count bound
OP_COUNTED = (  # (co-learner mode, implementation) whose operator calls are counted at b=4
    ("none", "engine-batched"),
    ("none", "engine-batched-fcall"),
    ("none", "reference"),
    ("cml", "engine-batched"),
)
CONV_IMPLS = ("engine-loop", "engine-vmap", "reference")


def bench_sinusoid(res: Results, n_tasks: int, threads: int) -> None:
    """Throughput of every strategy and both references; CML overhead and operator calls at
    b=4 (with the hot-path goals); memory."""
    key = f"sinusoid_b{n_tasks}"
    setups = {"none": sinusoid_setup(n_tasks, co=False), "cml": sinusoid_setup(n_tasks, co=True)}
    for mode, setup in setups.items():
        check_same(setup, mode, {i: objective_of(setup, mode, i) for i in SIN_IMPLS})
    variants = [variant(setups["none"], key, "none", impl, threads) for impl in SIN_IMPLS]
    if n_tasks == 4:
        variants += [
            variant(setups["cml"], key, "cml", impl, threads)
            for impl in ("engine-batched", "engine-batched-fcall")
        ]
    res.time(variants, key)
    ref = res.rate(f"{key}/reference/maml")
    res.ratios[f"{key}_speedup"] = res.rate(f"{key}/engine-batched/maml") / ref
    for impl in ("engine-vmap", "engine-loop"):
        res.ratios[f"{key}_{impl[7:]}_speedup"] = res.rate(f"{key}/{impl}/maml") / ref
    fcall = res.rate(f"{key}/reference-fcall/maml")
    res.ratios[f"{key}_speedup_vs_fcall"] = res.rate(f"{key}/engine-batched/maml") / fcall
    res.ratios[f"{key}_pure_speedup"] = res.rate(f"{key}/engine-batched/maml") / res.rate(
        f"{key}/engine-batched-fcall/maml"
    )
    if n_tasks == 4:
        step = res.per_step
        for impl, suffix in (("engine-batched", ""), ("engine-batched-fcall", "_fcall")):
            res.ratios[f"cml_overhead{suffix}"] = step(f"{key}/{impl}/cml") / step(
                f"{key}/{impl}/maml"
            )
        count_ops(res, setups, key)
    for mode, setup in setups.items():
        for impl in ("engine-batched", "reference"):
            res.measure_memory(setup, key, mode, impl)
    if n_tasks == 25:
        mem = res.mib
        res.ratios["cml_memory_ratio"] = mem(f"{key}/engine-batched/cml") / mem(
            f"{key}/engine-batched/maml"
        )
        res.ratios["engine_memory_ratio"] = mem(f"{key}/engine-batched/maml") / mem(
            f"{key}/reference/maml"
        )
        res.ratios["engine_memory_ratio_cml"] = mem(f"{key}/engine-batched/cml") / mem(
            f"{key}/reference/cml"
        )


def count_ops(res: Results, setups: dict[str, Setup], key: str) -> None:
    """Operator calls of the timed meta-steps, the op-count bound, and the hot-path goals."""
    for mode, impl in OP_COUNTED:
        setup = setups[mode]
        res.ops[f"{key}/{impl}/{label(mode)}"] = op_calls(
            meta_step(objective_of(setup, mode, impl), setup)
        )

    def calls(impl: str, mode: str = "maml") -> int:
        return res.ops[f"{key}/{impl}/{mode}"]["total"]

    bound = calls("reference") / calls("engine-batched")
    speedup = res.ratios[f"{key}_speedup"]
    res.ratios[f"{key}_op_bound"] = bound
    res.ratios[f"{key}_bound_gap"] = bound / speedup
    res.ratios["cml_op_ratio"] = calls("engine-batched", "cml") / calls("engine-batched")
    op, target = HOT_PATH_GOALS[f"{key}_speedup"]
    parts = {
        "speedup": goal_entry(speedup, op, target),
        "bound_gap": goal_entry(bound / speedup, "<=", BOUND_GAP),
    }
    res.goals[f"{key}_speedup"] = {
        **parts["speedup"],
        "goal": f"{op} {target:g} and within {BOUND_GAP:g}x of the op-count bound "
        f"({key}_op_bound / {key}_speedup <= {BOUND_GAP:g})",
        "met": parts["speedup"]["met"] and parts["bound_gap"]["met"],
        "parts": parts,
    }
    op, target = HOT_PATH_GOALS["cml_overhead"]
    res.goals["cml_overhead"] = goal_entry(res.ratios["cml_overhead"], op, target)


def bench_conv(res: Results, channels: int, threads: int) -> tuple[Setup, str]:
    """Conv-4 MAML and CML: engine loop and vmap against the reference; returns the winner."""
    key = "conv_b4"
    setups = {m: conv_setup(4, channels, co=m == "cml") for m in ("none", "cml")}
    variants = []
    for mode, setup in setups.items():
        check_same(setup, mode, {i: objective_of(setup, mode, i) for i in CONV_IMPLS})
        variants += [variant(setup, key, mode, impl, threads) for impl in CONV_IMPLS]
    res.time(variants, key)
    strategy = max(("loop", "vmap"), key=lambda s: res.rate(f"{key}/engine-{s}/maml"))
    best = f"engine-{strategy}"
    res.best["conv_best_strategy"] = strategy
    ref = res.rate(f"{key}/reference/maml")
    res.ratios["conv_speedup"] = res.rate(f"{key}/{best}/maml") / ref
    for s in ("loop", "vmap"):
        res.ratios[f"conv_{s}_speedup"] = res.rate(f"{key}/engine-{s}/maml") / ref
    res.ratios["conv_speedup_cml"] = res.rate(f"{key}/{best}/cml") / res.rate(
        f"{key}/reference/cml"
    )
    step = res.per_step
    res.ratios["cml_overhead_conv"] = step(f"{key}/{best}/cml") / step(f"{key}/{best}/maml")
    res.ratios["cml_overhead_conv_reference"] = step(f"{key}/reference/cml") / step(
        f"{key}/reference/maml"
    )
    for mode, setup in setups.items():
        for impl in CONV_IMPLS:
            res.measure_memory(setup, key, mode, impl)
    res.ratios["conv_cml_memory_ratio"] = res.mib(f"{key}/{best}/cml") / res.mib(
        f"{key}/{best}/maml"
    )
    res.ratios["conv_engine_memory_ratio"] = res.mib(f"{key}/{best}/maml") / res.mib(
        f"{key}/reference/maml"
    )
    return setups["none"], strategy


def bench_threads(res: Results, counts: tuple[int, ...], conv: Setup, conv_strategy: str) -> None:
    """The engine's best strategy on each workload at each thread count."""
    workloads = (
        ("sinusoid_b4", "sinusoid", sinusoid_setup(4, co=False), "engine-batched"),
        ("conv_b4", "conv", conv, f"engine-{conv_strategy}"),
    )
    for key, short, setup, impl in workloads:
        name = f"threads/{key}/{impl}/maml@"
        res.time(
            [replace(variant(setup, key, "none", impl, n), name=f"{name}{n}") for n in counts], key
        )
        if 1 in counts and 2 in counts:
            res.ratios[f"threads_2_over_1_{short}"] = res.rate(f"{name}2") / res.rate(f"{name}1")


# --------------------------------------------------------------------------- Omniglot

OMNIGLOT_PRESET = "omniglot-5w1s-cpu"
MATMUL_N = 1024  # the attainable-FLOP/s reference: one float32 n×n @ n×n product
# Goals from the issue that asked for the Omniglot benchmarks: (comparison, target).
GOALS: dict[str, tuple[str, float]] = {
    "omniglot_step_flop_efficiency": (">=", 0.6),
    "omniglot_engine_speedup": (">=", 1.0),  # "not slower than the per-task loop"
    "omniglot_sampling_speedup": (">=", 10.0),
    "omniglot_data_time_fraction": ("<=", 0.02),
    "cml_overhead_omniglot": ("<=", 1.05),
}
PER_IMAGE_NOTE = (
    "per task: classes and drawings picked with Python's random, then every image decoded by "
    "PIL from PNG bytes held in memory (read from the zips once, outside the timing, which "
    "favours this baseline), converted to greyscale, resized Lanczos, rotated, turned into a "
    "tensor one by one, then stacked"
)


@dataclass(frozen=True)
class OmniglotSetup:
    """The preset's task source, one fixed training meta-batch and three learners built from
    the preset: MAML and CML for the timed meta-steps, and a MAML copy that ``outer_step``
    (with Adam) may move without changing the parameters the others are timed at."""

    cfg: Config
    source: ClassificationSource
    batch: TaskBatch
    maml: Learner
    cml: Learner
    stepper: Learner
    data_root: Path


def omniglot_setup(runtime: Runtime | None = None, overrides: Sequence[str] = ()) -> OmniglotSetup:
    """Everything built the way ``cmlearn train --preset omniglot-5w1s-cpu`` builds it.

    Raises ``CmlearnError`` when the data cannot be read (the caller skips the benchmark).
    """
    runtime = runtime or Runtime(device=torch.device("cpu"))
    cfg = get_preset(OMNIGLOT_PRESET).override(["colearner.mode=none", *overrides])
    source = build_source(cfg, runtime)
    if not isinstance(source, ClassificationSource):
        raise CmlearnError(f"preset {OMNIGLOT_PRESET} did not give a classification source")
    batch = source.sample(cfg.task.meta_batch, generator("train", cfg.train.seed, 0))
    cml = build_learner(cfg.override(["colearner.mode=cml"]), source)
    return OmniglotSetup(
        cfg,
        source,
        batch,
        build_learner(cfg, source),
        cml,
        build_learner(cfg, source),
        runtime.data_root,
    )


def read_pngs(root: Path, wanted: set[str]) -> dict[str, list[bytes]]:
    """The PNG bytes of every drawing of the ``wanted`` characters (pool names such as
    ``images_background/<alphabet>/character01``), in the pool's drawing order."""
    out: dict[str, list[bytes]] = {}
    for path in zip_paths(root):
        try:
            with zipfile.ZipFile(path) as archive:
                members: dict[str, list[str]] = {}
                for member in archive.namelist():
                    char = member.rsplit("/", 1)[0]
                    if member.endswith(".png") and char in wanted:
                        members.setdefault(char, []).append(member)
                for char, files in members.items():
                    out[char] = [archive.read(name) for name in sorted(files)]
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise CmlearnError(f"cannot read PNGs from {path}: {err}") from None
    missing = wanted - out.keys()
    if missing:
        raise CmlearnError(f"{len(missing)} character(s) not in the zips, e.g. {min(missing)}")
    return out


class PerImagePipeline:
    """Tasks assembled image by image, as torchmeta and learn2learn pipelines do.

    The baseline the tensor-indexing sampler replaces: per task, pick the classes and the
    drawings, then decode, convert, resize, rotate and convert to a tensor one image at a
    time, and stack. It draws from the same split (same classes, same rotations) and gives
    the same pixels as the in-memory pool (``check_pipeline``).
    """

    def __init__(self, root: Path, source: ClassificationSource, split: str = "train") -> None:
        try:
            from PIL import Image
        except ImportError:
            raise CmlearnError("the per-image baseline needs Pillow: pip install pillow") from None
        self.pil = Image
        data = source.dataset
        classes = data.splits[split]
        self.classes, self.rotations = classes.classes.tolist(), classes.rotations.tolist()
        self.counts, self.names = data.pool.counts.tolist(), data.pool.names
        self.ways, self.shots = source.ways, source.shots
        self.queries = split_queries(source, split)
        self.size = data.input_shape[-1]
        self.png = read_pngs(root, {self.names[c] for c in set(self.classes)})

    def image(self, char: int, drawing: int, turn: int) -> Tensor:
        """One ``[1, S, S]`` float image, strokes bright (as the pool stores them)."""
        img = self.pil.open(io.BytesIO(self.png[self.names[char]][drawing])).convert("L")
        img = img.resize((self.size, self.size), self.pil.Resampling.LANCZOS)
        if turn:
            img = img.rotate(90 * turn)  # counter-clockwise, as torch.rot90 on (H, W)
        return torch.from_numpy(255 - np.asarray(img, dtype=np.uint8)).float().div_(255)[None]

    def sample(self, n_tasks: int, rng: random.Random) -> TaskBatch:
        k, q, n = self.shots, self.queries, self.ways
        support, query = [], []
        for _ in range(n_tasks):
            s: list[Tensor] = []
            qs: list[Tensor] = []
            for c in rng.sample(range(len(self.classes)), n):
                char, turn = self.classes[c], self.rotations[c]
                turn = turn if turn >= 0 else rng.randrange(4)
                images = [
                    self.image(char, d, turn) for d in rng.sample(range(self.counts[char]), k + q)
                ]
                s += images[:k]
                qs += images[k:]
            support.append(torch.stack(s))
            query.append(torch.stack(qs))
        labels = torch.arange(n)
        return TaskBatch(
            torch.stack(support),
            labels.repeat_interleave(k).expand(n_tasks, n * k).contiguous(),
            torch.stack(query),
            labels.repeat_interleave(q).expand(n_tasks, n * q).contiguous(),
        )


def check_pipeline(pipeline: PerImagePipeline, source: ClassificationSource) -> None:
    """The baseline must produce the sampler's pixels (every rotation), or the comparison is
    void; its batches must have the sampler's shapes."""
    pool = source.dataset.pool
    for i, char in enumerate(sorted(set(pipeline.classes))[:2]):
        for turn in range(4):
            drawing = (i + turn) % pipeline.counts[char]
            stored = pool.images[int(pool.offsets[char]) + drawing]
            expected = torch.rot90(stored, turn, dims=(-2, -1)).float().div(255)
            torch.testing.assert_close(
                pipeline.image(char, drawing, turn),
                expected,
                msg=f"per-image pipeline vs pool: {pool.names[char]} #{drawing}, {turn} turns",
            )
    ours = pipeline.sample(2, random.Random(0))
    theirs = source.sample(2, generator("train", 0, 0))
    for name in ("support_x", "support_y", "query_x", "query_y"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(
                f"per-image {name} is {a.dtype}{list(a.shape)}, not {b.dtype}{list(b.shape)}"
            )


def meta_step_flops(objective: Callable[[], Tensor], params: list[Tensor]) -> dict[str, Any]:
    """FLOPs of one meta-step as ``FlopCounterMode`` counts them (convolutions and matrix
    products, forward and backward kernels).

    Two phases: ``objective`` is the meta-loss's construction (the support forward, the inner
    ``autograd.grad`` with ``create_graph`` and the query forward); ``outer_backward`` is
    ``backward()``, which runs the query backward and the double backward through the inner
    gradient. Element-wise work (BatchNorm, ReLU, pooling) has no FLOPs here but takes time.
    """
    with FlopCounterMode(display=False) as inner:
        loss = objective()
    with FlopCounterMode(display=False) as outer:
        loss.backward()
    for p in params:
        p.grad = None
    by_op = {
        phase: {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
        for phase, counter in (("objective", inner), ("outer_backward", outer))
    }
    total = inner.get_total_flops() + outer.get_total_flops()
    return {
        "total": int(total),
        "objective": int(inner.get_total_flops()),
        "outer_backward": int(outer.get_total_flops()),
        "by_op": by_op,
    }


def matmul_step(n: int) -> tuple[Callable[[], None], int]:
    """A float32 ``n×n @ n×n`` product into a preallocated output, and its FLOPs (counted)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)

    def step() -> None:
        torch.mm(a, b, out=out)

    with FlopCounterMode(display=False) as counter:
        step()
    return step, int(counter.get_total_flops())


def goal_entry(value: float | None, op: str, target: float) -> dict[str, Any]:
    met = None if value is None else bool(value >= target if op == ">=" else value <= target)
    return {"value": value, "goal": f"{op} {target:g}", "met": met}


def omniglot_goals(res: Results, note: str | None = None) -> None:
    """Goal entries of the Omniglot ratios (``met`` is None when skipped, with the note)."""
    entries = {}
    for key, (op, target) in GOALS.items():
        entries[key] = goal_entry(res.ratios.get(key), op, target)
        if note is not None:
            entries[key]["skipped"] = note
    eff, speed = (
        entries.pop("omniglot_step_flop_efficiency"),
        entries.pop("omniglot_engine_speedup"),
    )
    both = None if eff["met"] is None else bool(eff["met"] and speed["met"])
    res.goals["omniglot_step_flop_efficiency"] = {
        **eff,
        "goal": f"{eff['goal']} and not slower than the per-task loop "
        "(omniglot_engine_speedup >= 1)",
        "met": both,
        "parts": {"flop_efficiency": eff, "engine_speedup": speed},
    }
    res.goals.update(entries)


def bench_omniglot(
    res: Results,
    threads: int,
    quick: bool = False,
    runtime: Runtime | None = None,
    overrides: Sequence[str] = (),
    matmul_n: int = MATMUL_N,
) -> dict[str, Any]:
    """The Omniglot 5w1s benchmarks, timed together and interleaved at ``threads`` threads.

    One group holds the engine's MAML and CML meta-steps, the per-task reference's MAML
    meta-step, a training ``outer_step`` (Adam included), the matmul reference, the sampler
    and the per-image baseline, so every ratio compares numbers taken side by side; the cheap
    variants get more steps per repeat so that their timed spans are not tiny. Returns the
    report's ``omniglot`` section; without the data (``CmlearnError``) it returns
    ``{"status": "skipped", "note": …}`` and the goals say so, instead of failing the bench.
    """
    torch.set_num_threads(threads)
    try:
        setup = omniglot_setup(runtime, overrides)
        pipeline = PerImagePipeline(setup.data_root, setup.source)
    except CmlearnError as err:
        note = f"Omniglot benchmarks skipped: {err}"
        omniglot_goals(res, note)
        return {"status": "skipped", "note": note}
    cfg, batch, key, T = setup.cfg, setup.batch, "omniglot", setup.batch.n_tasks
    lr, gamma = cfg.inner.lr, cfg.colearner.gamma

    def reference(net: Cooperative, mode: str) -> Callable[[], Tensor]:
        return reference_objective(Setup(net, batch, "ce"), mode, explicit_forward, lr, gamma)

    def engine(learner: Learner) -> Callable[[], Tensor]:
        return lambda: learner.meta_objective(batch)[0]

    maml, cml = f"engine-{setup.maml.strategy}/maml", f"engine-{setup.cml.strategy}/cml"
    meta = {  # timed meta-steps: name -> (objective, network, co-learner mode)
        maml: (engine(setup.maml), setup.maml.net, "none"),
        cml: (engine(setup.cml), setup.cml.net, "cml"),
        "reference/maml": (reference(setup.maml.net, "none"), setup.maml.net, "none"),
    }
    check_same(
        Setup(setup.maml.net, batch, "ce"), "none", {k: meta[k][0] for k in meta if k != cml}
    )
    check_same(
        Setup(setup.cml.net, batch, "ce"),
        "cml",
        {"engine": meta[cml][0], "reference": reference(setup.cml.net, "cml")},
    )
    check_pipeline(pipeline, setup.source)
    flops = {
        name: meta_step_flops(obj, list(net.parameters())) for name, (obj, net, _) in meta.items()
    }
    split = kernel_split(meta_step(meta[maml][0], Setup(setup.maml.net, batch, "ce")))
    variants = [
        Variant(
            f"{key}/{name}",
            meta_step(obj, Setup(net, batch, "ce")),
            T,
            {
                "benchmark": key,
                "impl": name.split("/")[0],
                "strategy": setup.maml.strategy,
                "co": mode,
            },
            threads,
        )
        for name, (obj, net, mode) in meta.items()
    ]

    optimizer = make_optimizer(setup.stepper, cfg)
    mm, mm_flops = matmul_step(matmul_n)
    draws = iter(range(1, 1 << 62))  # a fresh training meta-batch every time, as in training
    rng = random.Random(cfg.train.seed)
    outer = f"outer_step-{setup.stepper.strategy}/maml"
    extras = {  # name -> (step, tasks per step, steps-per-repeat key)
        outer: (lambda: outer_step(setup.stepper, optimizer, batch, 0.0), T, "omniglot"),
        f"matmul/{matmul_n}": (mm, 1, "omniglot_matmul"),
        "sampler/tensor-index": (
            lambda: setup.source.sample(T, generator("train", cfg.train.seed, next(draws))),
            T,
            "omniglot_sample",
        ),
        "sampler/per-image": (lambda: pipeline.sample(T, rng), T, "omniglot_per_image"),
    }
    for name, (fn, n, workload) in extras.items():
        info = {"benchmark": key, "impl": name.split("/")[0], "strategy": name, "co": "none"}
        variants.append(Variant(f"{key}/{name}", fn, n, info, threads, res.plan.steps[workload]))
    repeats = min(res.plan.repeats, 3) if quick else res.plan.repeats
    warmup = 1 if quick else min(res.plan.warmup, 2)
    res.time(variants, key, repeats, warmup)

    def ratios(clock: str) -> tuple[dict[str, float], float, dict[str, float]]:
        """The Omniglot ratios, the matmul's FLOP/s and each meta-step's, by ``clock``."""

        def step(name: str) -> float:
            return res.per_step(f"{key}/{name}", clock)

        mm_rate = mm_flops / step(f"matmul/{matmul_n}")
        achieved = {name: f["total"] / step(name) for name, f in flops.items()}
        return (
            {
                "omniglot_step_flop_efficiency": achieved[maml] / mm_rate,
                "omniglot_step_flop_efficiency_reference": achieved["reference/maml"] / mm_rate,
                "omniglot_engine_speedup": step("reference/maml") / step(maml),
                "cml_overhead_omniglot": step(cml) / step(maml),
                "omniglot_sampling_speedup": step("sampler/per-image")
                / step("sampler/tensor-index"),
                "omniglot_data_time_fraction": step("sampler/tensor-index") / step(outer),
            },
            mm_rate,
            achieved,
        )

    wall, mm_rate, achieved = ratios("wall")
    by_cpu, mm_cpu, achieved_cpu = ratios("cpu")
    ideal_conv_s = flops[maml]["total"] / mm_cpu  # every counted FLOP at the matmul's rate
    other_s = split["other"] * res.per_step(f"{key}/{maml}", "cpu")  # the rest, as it is
    paired = {  # the two same-kernel comparisons, per repeat (see Results.paired)
        f"{name}_{clock}": res.paired(f"{key}/{a}", f"{key}/{b}", clock)
        for name, a, b in (
            ("omniglot_engine_speedup", "reference/maml", maml),
            ("cml_overhead_omniglot", cml, maml),
        )
        for clock in ("wall", "cpu")
    }
    res.ratios.update(wall)
    omniglot_goals(res)
    return {
        "status": "ok",
        "preset": OMNIGLOT_PRESET,
        "overrides": list(overrides),
        "threads": threads,
        "repeats": repeats,
        "warmup_steps": warmup,
        "task": {k: getattr(cfg.task, k) for k in ("ways", "shots", "queries", "meta_batch")},
        "model": {"name": cfg.model.name, **dataclasses.asdict(cfg.model.options)},
        "colearner": {"gamma": gamma, "head": dataclasses.asdict(cfg.colearner.head.options)},
        "inner": {"steps": cfg.inner.steps, "lr": lr, "first_order": cfg.inner.first_order},
        "flops": flops,
        "matmul": {
            "n": matmul_n,
            "flops": mm_flops,
            "gflop_per_s": mm_rate / 1e9,
            "gflop_per_cpu_s": mm_cpu / 1e9,
        },
        "achieved_gflop_per_s": {name: x / 1e9 for name, x in achieved.items()},
        "achieved_gflop_per_cpu_s": {name: x / 1e9 for name, x in achieved_cpu.items()},
        "ratios_by_cpu_time": by_cpu,
        "paired_ratios": paired,
        # the FLOP efficiency the engine's step would reach if every convolution ran at the
        # matmul's FLOP/s and all other kernels took the time they take now
        "kernel_share": split,
        "flop_efficiency_bound": ideal_conv_s / (ideal_conv_s + other_s),
        "per_image_pipeline": PER_IMAGE_NOTE,
    }


def run(
    repeats: int = 5,
    quick: bool = False,
    threads: tuple[int, ...] = (1, 2),
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Run every benchmark; returns ``{"machine", "config", "measurements", "memory", "ops",
    "ratios", "best", "goals", "omniglot"}``.

    ``quick`` times fewer steps per repeat (a smoke test); the ratios keep their meaning but
    are noisier. The Omniglot benchmarks run at ``threads[0]`` threads (the thread count is
    part of what a FLOP/s figure means) and are skipped, with a note, without the data.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (got {repeats})")
    steps = QUICK_STEPS if quick else FULL_STEPS
    plan = Plan(repeats, 2 if quick else 3, steps)
    res = Results(plan)
    info = machine()
    base = torch.get_num_threads()
    start, busy = time.perf_counter(), busy_cpu_s()
    try:
        for n_tasks in (4, 25):
            log(f"sinusoid b={n_tasks}")
            bench_sinusoid(res, n_tasks, base)
        log("conv b=4")
        conv, strategy = bench_conv(res, CONV_CHANNELS, base)
        log(f"threads {threads}")
        bench_threads(res, threads, conv, strategy)
        log(f"omniglot 5w1s at {threads[0]} thread(s)")
        omniglot = bench_omniglot(res, threads[0], quick)
        if omniglot["status"] != "ok":
            log(omniglot["note"])
        ddp = bench_ddp(res, quick, log)
        leaks = bench_leaks(res, quick, log)
        graph = bench_graph(res, quick, log)
        resnet = bench_resnet(res, quick, log, threads[0])
    finally:
        torch.set_num_threads(base)
    busy_end, wall = busy_cpu_s(), time.perf_counter() - start
    info["wall_s"] = round(wall, 1)
    if busy is not None and busy_end is not None:
        others = (busy_end[0] - busy[0]) - (busy_end[1] - busy[1])
        info["other_processes_cpu_share"] = max(0.0, others / ((os.cpu_count() or 1) * wall))
    return {
        "machine": info,
        "config": {
            "repeats": repeats,
            "quick": quick,
            "warmup_steps": plan.warmup,
            "steps_per_repeat": steps,
            "repeat_factor": REPEAT_FACTOR,
            "inner": {"steps": 1, "lr": LR, "order": "second"},
            "gamma": GAMMA,
            "conv_channels": CONV_CHANNELS,
        },
        "measurements": res.rows,
        "memory": res.memory,
        "ops": res.ops,
        "ratios": res.ratios,
        "best": res.best,
        "goals": res.goals,
        "omniglot": omniglot,
        "ddp": ddp,
        "leaks": leaks,
        "graph": graph,
        "resnet12": resnet,
    }


def bench_ddp(res: Results, quick: bool, log: Callable[[str], None]) -> dict:
    """2 ranks × 1 thread against 1 process × 1 thread on the Omniglot meta-step."""
    from cmlearn.bench_ddp import GOAL, ddp_2proc_speedup

    log("ddp: 2 processes x 1 thread vs 1 process x 1 thread")
    ddp = ddp_2proc_speedup(*((1, 1, 1) if quick else (3, 5, 2)), log=log)
    if ddp["status"] == "ok":
        res.ratios["ddp_2proc_speedup"] = ddp["ddp_2proc_speedup"]
        res.ratios["cml_overhead_ddp"] = ddp["cml_overhead_ddp"]
        res.ratios["ddp_2proc_ceiling"] = ddp["ddp_2proc_ceiling"]
        res.goals["ddp_2proc_speedup"] = ddp["goal"]
    else:
        res.goals["ddp_2proc_speedup"] = goal_entry(None, ">=", GOAL) | {"note": ddp["note"]}
    return ddp


def bench_graph(res: Results, quick: bool, log: Callable[[str], None]) -> dict:
    """G-Meta's meta-step on Amazon-Computer against the dense re-extracting reference."""
    from cmlearn.bench_graph import GOALS as GRAPH_GOALS
    from cmlearn.bench_graph import bench

    log("graph: G-Meta meta-step, Amazon-Computer 2-way 5-shot, ours vs dense reference")
    graph = bench(1 if quick else 3, log)
    for key, (op, target) in GRAPH_GOALS.items():
        value = graph.get(key)
        if value is not None:
            res.ratios[key] = value
        res.goals[key] = goal_entry(value, op, target) | (
            {} if graph["status"] == "ok" else {"note": graph["note"]}
        )
    return graph


def bench_resnet(res: Results, quick: bool, log: Callable[[str], None], threads: int) -> dict:
    """ResNet-12 at 32 px: CML's overhead, engine strategies against the per-task loop, memory."""
    from cmlearn.bench_resnet import GOALS as RESNET_GOALS
    from cmlearn.bench_resnet import bench

    log(f"resnet12: 5-way 1-shot at 32 px, second order, {threads} thread(s)")
    resnet = bench(quick, log, threads)
    res.ratios.update(resnet["ratios"])
    res.best["resnet12_best_strategy"] = resnet["best_strategy"]
    for key, (op, target) in RESNET_GOALS.items():
        res.goals[key] = goal_entry(resnet["ratios"][key], op, target)
    return resnet


def bench_leaks(res: Results, quick: bool, log: Callable[[str], None]) -> list[dict]:
    """Resident-memory growth of real training runs between two late marks (cmlearn.leaks)."""
    from cmlearn.leaks import BOUND_MIB, WORKLOADS, memory_growth

    marks = (50, 300) if quick else (200, 2000)
    found = []
    for name in WORKLOADS:
        log(f"leak check {name}: steps {marks[0]} -> {marks[1]}")
        try:
            result = memory_growth(name, marks)
        except CmlearnError as err:  # e.g. no Omniglot data
            res.goals[f"leak_{name}_mib"] = goal_entry(None, "<=", BOUND_MIB) | {"note": str(err)}
            continue
        found.append(result)
        res.goals[f"leak_{name}_mib"] = goal_entry(result["growth_mib"], "<=", BOUND_MIB)
    return found


# --------------------------------------------------------------------------- CLI


def format_report(result: dict) -> str:
    """A plain-text table of the measurements, the memory figures and the ratios."""
    m = result["machine"]
    lines = [
        f"cmlearn bench  torch {m['torch']}  {m['cpu_count']} CPUs  {m['threads']} threads  "
        f"repeats={result['config']['repeats']}  quick={result['config']['quick']}  "
        f"{m['wall_s']:.0f} s",
    ]
    others = m.get("other_processes_cpu_share")
    if others is not None and others >= 0.05:
        lines.append(
            f"WARNING: other processes used {others:.0%} of the CPUs during the run; timings "
            "(above all multi-threaded ones) are unreliable"
        )
    lines += [
        "",
        f"{'measurement':<48} {'thr':>3} {'tasks/s':>10} {'ms/step':>9} {'spread':>8}",
    ]
    for r in result["measurements"]:
        rates = r["tasks_per_s_repeats"]
        spread = (max(rates) - min(rates)) / r["tasks_per_s"]
        lines.append(
            f"{r['name']:<48} {r['threads']:>3} {r['tasks_per_s']:>10.1f} "
            f"{1e3 * r['s_per_step']:>9.2f} {spread:>7.0%}"
        )
    lines += ["", f"{'saved for backward (one meta-step)':<48} {'MiB':>10}"]
    lines += [f"{x['name']:<48} {x['saved_MiB']:>10.3f}" for x in result["memory"]]
    lines += ["", f"{'aten operator calls of one meta-step (torch.profiler)':<56} {'calls':>8}"]
    lines += [f"{name:<56} {count['total']:>8}" for name, count in result.get("ops", {}).items()]
    lines += ["", "ratios (engine / reference throughput unless named otherwise)"]
    lines += [f"  {k:<40} {number(v):>8}" for k, v in result["ratios"].items()]
    lines += [f"  {k:<40} {v:>8}" for k, v in result["best"].items()]
    goals = result.get("goals", {})
    hot = {k: v for k, v in goals.items() if k not in GOALS}
    if hot:
        lines += ["", "goals of the hot path (wall-clock medians)", *goal_lines(hot)]
    return "\n".join(lines + omniglot_report(result.get("omniglot"), goals))


def number(value: float) -> str:
    """Two decimals, or two significant digits for small values (a 0.3 % data fraction)."""
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"


def omniglot_report(section: dict | None, goals: dict[str, dict]) -> list[str]:
    """The Omniglot section's FLOP figures and every goal, met or not (or why skipped)."""
    lines = ["", "omniglot 5w1s (Conv-4, preset omniglot-5w1s-cpu)"]
    if section is None:
        return []
    if section["status"] != "ok":
        return [*lines, f"  {section['note']}"]
    gflops = section["achieved_gflop_per_s"]
    lines.append(
        f"  threads {section['threads']}; matmul {section['matmul']['n']}^2: "
        f"{section['matmul']['gflop_per_s']:.1f} GFLOP/s"
    )
    for name, count in section["flops"].items():
        lines.append(
            f"  {name:<22} {count['total'] / 1e9:7.2f} GFLOP per meta-step "
            f"({count['objective'] / 1e9:.2f} building the loss, "
            f"{count['outer_backward'] / 1e9:.2f} outer backward): {gflops[name]:.1f} GFLOP/s"
        )
    by_cpu = ", ".join(f"{k} {number(v)}" for k, v in section["ratios_by_cpu_time"].items())
    lines.append(f"  the same ratios by process CPU time: {by_cpu}")
    paired = ", ".join(f"{k} {number(v)}" for k, v in section["paired_ratios"].items())
    lines.append(f"  medians of per-repeat ratios: {paired}")
    share = section["kernel_share"]
    lines.append(
        f"  engine step by kernel (profiler): convolutions {share['conv']:.0%}, everything "
        f"else {share['other']:.0%}; FLOP efficiency if every convolution ran at the matmul's "
        f"FLOP/s: {section['flop_efficiency_bound']:.2f}"
    )
    omniglot = {k: v for k, v in goals.items() if k in GOALS}
    return [*lines, "", "goals (wall-clock medians)", *goal_lines(omniglot)]


def goal_lines(goals: dict[str, dict]) -> list[str]:
    """One line per goal: its value, met or not (or skipped), and the goal."""
    lines = []
    for key, entry in goals.items():
        if entry["met"] is None:
            status = "skipped"
        else:
            status = "met" if entry["met"] else "NOT met"
        value = "-" if entry["value"] is None else number(entry["value"])
        lines.append(f"  {key:<40} {value:>8}  {status:<8} goal {entry['goal']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cmlearn bench", description="Engine vs per-task reference: speed and memory."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--quick", action="store_true", help="fewer steps per repeat")
    parser.add_argument(
        "--threads", default="1,2", help="thread counts for the scaling benchmark, e.g. 1,2"
    )
    args = parser.parse_args(argv)
    try:
        threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
    except ValueError:
        parser.error(f"--threads must be comma-separated integers (got {args.threads!r})")
    if not threads or min(threads) < 1:
        parser.error("--threads needs at least one positive thread count")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    log = (lambda _: None) if args.json else (lambda s: print(f"... {s}", file=sys.stderr))
    result = run(args.repeats, args.quick, threads, log)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
