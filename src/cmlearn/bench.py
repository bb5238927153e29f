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
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cmlearn.algorithms.rule import InnerRule, Params, group_of
from cmlearn.cml import CoLearnerSpec
from cmlearn.engine import Learner
from cmlearn.models import MLP, ConvNet, Cooperative, TaskLinear, build_colearner
from cmlearn.tasks import SinusoidFamily, TaskBatch
from cmlearn.tasks.batch import generator

LR = 0.01  # inner step size α (one second-order step everywhere)
GAMMA = 0.2  # CML co-learner loss scale γ
N_WAY, QUERIES_PER_CLASS, IMAGE = 5, 15, 28
CONV_CHANNELS = 32
FULL_STEPS = {"sinusoid_b4": 200, "sinusoid_b25": 40, "conv_b4": 8}
QUICK_STEPS = {"sinusoid_b4": 40, "sinusoid_b25": 8, "conv_b4": 2}
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
    """One timed configuration: a meta-step function and the thread count it runs at."""

    name: str
    step: Callable[[], None]
    n_tasks: int
    info: dict[str, Any]
    threads: int


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


def engine_objective(setup: Setup, mode: str, strategy: str) -> Callable[[], Tensor]:
    """The engine's meta-loss of the setup's batch (MAML when ``mode`` is ``none``)."""
    rule = InnerRule(steps=1, lr=LR)
    learner = Learner.create(setup.net, rule, CoLearnerSpec(mode, GAMMA), setup.loss, strategy)
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


def reference_objective(setup: Setup, mode: str, forward: Forward) -> Callable[[], Tensor]:
    """The per-task loop: one support pass, one ``autograd.grad`` and one query pass per task."""
    params, batch, co = setup.params, setup.batch, CoLearnerSpec(mode, GAMMA)
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
                adapted[name] = params[name] - LR * g
            outs = forward(setup.net, adapted, batch.query_x[i], co.heads(inner=False))
            total = total + loss_fn(outs[0], batch.query_y[i])
            if co.active:
                total = total + GAMMA * loss_fn(outs[1], batch.query_y[i])
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
    """``impl`` is ``engine-<strategy>``, ``reference`` or ``reference-fcall``."""
    if impl == "reference":
        return reference_objective(setup, mode, explicit_forward)
    if impl == "reference-fcall":
        return reference_objective(setup, mode, module_forward)
    return engine_objective(setup, mode, impl.removeprefix("engine-"))


def label(mode: str) -> str:
    return "maml" if mode == "none" else mode


def variant(setup: Setup, benchmark: str, mode: str, impl: str, threads: int) -> Variant:
    """A timed meta-step named ``benchmark/impl/algorithm``."""
    strategy = impl.removeprefix("engine-") if impl.startswith("engine-") else "per-task"
    return Variant(
        f"{benchmark}/{impl}/{label(mode)}",
        meta_step(objective_of(setup, mode, impl), setup),
        setup.batch.n_tasks,
        {"benchmark": benchmark, "impl": impl, "strategy": strategy, "co": mode},
        threads,
    )


def time_interleaved(variants: list[Variant], steps: int, repeats: int, warmup: int) -> dict:
    """Seconds per meta-step of each variant, one entry per repeat."""
    for v in variants:
        torch.set_num_threads(v.threads)
        for _ in range(warmup):
            v.step()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            torch.set_num_threads(v.threads)
            start = time.perf_counter()
            for _ in range(steps):
                v.step()
            times[v.name].append((time.perf_counter() - start) / steps)
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

    def time(self, variants: list[Variant], workload: str) -> None:
        steps = self.plan.steps[workload]
        times = time_interleaved(variants, steps, self.plan.repeats, self.plan.warmup)
        for v in variants:
            secs = times[v.name]
            rates = [v.n_tasks / s for s in secs]
            self.rows.append(
                {
                    "name": v.name,
                    **v.info,
                    "threads": v.threads,
                    "n_tasks": v.n_tasks,
                    "steps_per_repeat": steps,
                    "tasks_per_s": statistics.median(rates),
                    "s_per_step": statistics.median(secs),
                    "tasks_per_s_repeats": rates,
                    "s_per_step_repeats": secs,
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
        return next(r["tasks_per_s"] for r in self.rows if r["name"] == name)

    def per_step(self, name: str) -> float:
        return next(r["s_per_step"] for r in self.rows if r["name"] == name)

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

SIN_IMPLS = ("engine-batched", "engine-vmap", "engine-loop", "reference", "reference-fcall")
CONV_IMPLS = ("engine-loop", "engine-vmap", "reference")


def bench_sinusoid(res: Results, n_tasks: int, threads: int) -> None:
    """Throughput of every strategy and both references; CML overhead at b=4; memory."""
    key = f"sinusoid_b{n_tasks}"
    setups = {"none": sinusoid_setup(n_tasks, co=False), "cml": sinusoid_setup(n_tasks, co=True)}
    for mode, setup in setups.items():
        check_same(setup, mode, {i: objective_of(setup, mode, i) for i in SIN_IMPLS})
    variants = [variant(setups["none"], key, "none", impl, threads) for impl in SIN_IMPLS]
    if n_tasks == 4:
        variants.append(variant(setups["cml"], key, "cml", "engine-batched", threads))
    res.time(variants, key)
    ref = res.rate(f"{key}/reference/maml")
    res.ratios[f"{key}_speedup"] = res.rate(f"{key}/engine-batched/maml") / ref
    for impl in ("engine-vmap", "engine-loop"):
        res.ratios[f"{key}_{impl[7:]}_speedup"] = res.rate(f"{key}/{impl}/maml") / ref
    fcall = res.rate(f"{key}/reference-fcall/maml")
    res.ratios[f"{key}_speedup_vs_fcall"] = res.rate(f"{key}/engine-batched/maml") / fcall
    if n_tasks == 4:
        res.ratios["cml_overhead"] = res.per_step(f"{key}/engine-batched/cml") / res.per_step(
            f"{key}/engine-batched/maml"
        )
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


def run(
    repeats: int = 5,
    quick: bool = False,
    threads: tuple[int, ...] = (1, 2),
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Run every benchmark; returns ``{"machine", "config", "measurements", "memory",
    "ratios", "best"}``.

    ``quick`` times fewer steps per repeat (a smoke test); the ratios keep their meaning but
    are noisier.
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
            "inner": {"steps": 1, "lr": LR, "order": "second"},
            "gamma": GAMMA,
            "conv_channels": CONV_CHANNELS,
        },
        "measurements": res.rows,
        "memory": res.memory,
        "ratios": res.ratios,
        "best": res.best,
    }


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
    lines += ["", "ratios (engine / reference throughput unless named otherwise)"]
    lines += [f"  {k:<36} {v:>8.2f}" for k, v in result["ratios"].items()]
    lines += [f"  {k:<36} {v:>8}" for k, v in result["best"].items()]
    return "\n".join(lines)


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
