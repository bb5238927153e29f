"""What the benchmarks measure with: the workloads (sinusoid MLP, Conv-4), the engine and
reference objectives, interleaved timing, saved-tensor memory, operator counts and FLOPs.

``suite`` runs them; ``ddp`` and ``resnet`` reuse the timing and memory helpers.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from cmlearn.core.algorithms.rule import InnerRule, Params, group_of
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.models import MLP, ConvNet, Cooperative, TaskLinear, build_colearner
from cmlearn.core.tasks import SinusoidFamily, TaskBatch
from cmlearn.core.tasks.batch import generator

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
