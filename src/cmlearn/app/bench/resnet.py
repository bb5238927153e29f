"""ResNet-12's meta-step: what CML costs, the engine against the per-task loop, and memory.

The workload is Table 9's: ResNet-12 (64-160-320-640) on 32×32 RGB images, 5-way 1-shot
with 15 queries per class, second order, synthetic pixels (data loading stays out of it);
CML adds the ``resnet`` co-learner (two 640-channel convs + pool + FC, γ = 1).

- ``cml_overhead_resnet12``: a CML meta-step over a MAML meta-step, both the engine's
  (goal ≤ 1.05), timed interleaved in one process.
- ``resnet12_engine_speedup_<strategy>``: the per-task reference loop's step time (one
  ``functional_call`` support pass, ``autograd.grad`` and query pass per task, as
  torchmeta / learn2learn code runs) over the engine's, for the ``loop`` and ``vmap``
  strategies; which one wins on CPU is reported, not assumed.
- Memory: MiB saved for backward by one meta-step (``bench.saved_mib``) per task, at one and
  at five inner steps, engine and reference; a meta-batch of T tasks at once needs T times
  the per-task figure, while ``train.task_chunk=c`` bounds it at c tasks' worth whatever the
  meta-batch (the gradient is the same; tested in ``tests/test_train.py``). The largest
  meta-batch that fits a budget without chunking is reported for the given budget.
- ``peak_mib_cml_5_steps``: peak resident growth of one CML meta-step (one task, five
  second-order inner steps) in a fresh process, plain and with ``inner.checkpoint`` (each
  inner step recomputed in the backward), at 1 and 5 shots; ``checkpoint_memory_ratio``.
- ``flop_ratio``: the CML step's FLOPs over MAML's (``FlopCounterMode``), the overhead the
  co-learner's arithmetic alone implies, at 1 and 5 shots; the time ratio can approach it but
  not beat it.
- ``conv_paths``: a second-order step (support gradient with ``create_graph``, query loss at
  the adapted weight, backward; inputs needing gradients) of one 3×3 layer per shape, oneDNN's
  ``F.conv2d`` against ``layers.matmul_conv2d``: the measurement behind ``layers.Conv2d``'s
  choice of path.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from cmlearn.app.bench.leaks import fresh_json, status_kib
from cmlearn.core.algorithms import InnerRule, group_of
from cmlearn.core.cml import CoLearnerSpec
from cmlearn.core.engine import Learner
from cmlearn.core.models import Cooperative
from cmlearn.core.models.colearner import ResNetHeadOptions, resnet_head
from cmlearn.core.models.resnet import WIDTHS, ResNet12
from cmlearn.core.tasks.batch import TaskBatch

WAYS, SHOTS, QUERIES, IMAGE = 5, 1, 15, 32
LR, GAMMA = 0.3, 1.0  # BOIL's ResNet-12 inner step; γ = 1 (the presets' value)
GOALS = {"cml_overhead_resnet12": ("<=", 1.05)}
BUDGET_MIB = 16 * 1024  # "the largest meta-batch that fits" is reported for this budget


def batch(n_tasks: int, seed: int = 0, shots: int = SHOTS) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    n_query = WAYS * QUERIES
    return TaskBatch(
        torch.rand(n_tasks, WAYS * shots, 3, IMAGE, IMAGE, generator=gen),
        torch.arange(WAYS).repeat_interleave(shots).expand(n_tasks, -1).contiguous(),
        torch.rand(n_tasks, n_query, 3, IMAGE, IMAGE, generator=gen),
        torch.arange(WAYS).repeat_interleave(QUERIES).expand(n_tasks, -1).contiguous(),
    )


def network(co: bool, widths: tuple[int, ...] = WIDTHS) -> Cooperative:
    torch.manual_seed(0)
    model = ResNet12(3, WAYS, IMAGE, widths)
    colearner = None
    if co:
        feature = Cooperative(model).features(torch.rand(2, 3, IMAGE, IMAGE)).shape[1:]
        colearner = resnet_head(ResNetHeadOptions(), tuple(feature), WAYS)
    return Cooperative(model, colearner)


def engine(
    net: Cooperative, mode: str, strategy: str, steps: int, checkpoint: bool = False
) -> Callable[[], Tensor]:
    rule = InnerRule(steps=steps, lr=LR, checkpoint=checkpoint)
    learner = Learner.create(net, rule, CoLearnerSpec(mode, GAMMA), "ce", strategy)
    return lambda data: learner.meta_objective(data)[0]


def reference(net: Cooperative, mode: str, steps: int) -> Callable[[TaskBatch], Tensor]:
    """The per-task loop through ``functional_call``, second order, ``steps`` inner steps."""
    params = dict(net.named_parameters())
    fast = [k for k in params if group_of(k) != "colearner"]
    co = CoLearnerSpec(mode, GAMMA)

    def objective(data: TaskBatch) -> Tensor:
        total = torch.zeros(())
        for i in range(data.n_tasks):
            adapted = dict(params)
            for _ in range(steps):
                (out,) = functional_call(net, adapted, (data.support_x[i],), {"heads": ("meta",)})
                loss = F.cross_entropy(out, data.support_y[i])
                grads = torch.autograd.grad(loss, [adapted[k] for k in fast], create_graph=True)
                adapted |= {k: adapted[k] - LR * g for k, g in zip(fast, grads, strict=True)}
            outs = functional_call(net, adapted, (data.query_x[i],), {"heads": co.heads(False)})
            total = total + F.cross_entropy(outs[0], data.query_y[i])
            if co.active:
                total = total + GAMMA * F.cross_entropy(outs[1], data.query_y[i])
        return total / data.n_tasks

    return objective


CONV_SHAPES = (  # (pixels per side, channels): ResNet-12's blocks at 32 and 84 px, Conv-4's
    (2, 640),
    (4, 640),
    (5, 640),
    (8, 320),
    (10, 640),
    (16, 160),
    (3, 64),
    (7, 64),
)


def second_order_step(
    f: Callable[[Tensor, Tensor], Tensor], w: Tensor, support: Tensor, query: Tensor
) -> None:
    (g,) = torch.autograd.grad(f(support, w).square().mean(), w, create_graph=True)
    f(query, w - 0.1 * g).square().mean().backward()


def conv_paths(
    repeats: int,
    log: Callable[[str], None],
    shapes: tuple[tuple[int, int], ...] = CONV_SHAPES,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Median CPU seconds of a second-order 5-way 1-shot step of one 3×3 layer, both paths."""
    from cmlearn.app.bench.measure import Variant, time_interleaved
    from cmlearn.core.models.layers import Conv2d, matmul_conv2d

    out = {}
    for side, channels in shapes:
        gen = torch.Generator().manual_seed(side)
        conv = Conv2d(channels, channels, 3, padding=1, bias=False)
        support = torch.rand(WAYS * SHOTS, channels, side, side, generator=gen).requires_grad_()
        query = torch.rand(WAYS * QUERIES, channels, side, side, generator=gen).requires_grad_()
        paths = {
            "onednn": lambda x, w: F.conv2d(x, w, padding=1),
            "matmul": lambda x, w, conv=conv: matmul_conv2d(x, w, None, conv),
        }

        cpu: dict[str, list[float]] = {}
        variants = [
            Variant(
                name, partial(second_order_step, f, conv.weight, support, query), 1, {}, threads
            )
            for name, f in paths.items()
        ]
        time_interleaved(variants, 1, repeats, 1, cpu)
        med = {n: statistics.median(v) for n, v in cpu.items()}
        key = f"{side}x{side}x{channels}"
        out[key] = {
            "onednn_s": med["onednn"],
            "matmul_s": med["matmul"],
            "onednn_over_matmul": med["onednn"] / med["matmul"],
            "chosen": "matmul" if conv.uses_matmul(query) else "onednn",
        }
        log(f"conv path {key}: oneDNN/matmul {out[key]['onednn_over_matmul']:.2f}")
    return out


def flop_ratio(widths: tuple[int, ...]) -> dict[str, float]:
    """CML's meta-step FLOPs over MAML's, one task, at 1 and 5 shots."""
    from cmlearn.app.bench.measure import meta_step_flops

    ratios = {}
    for shots in (1, 5):
        data = batch(1, shots=shots)
        flops = {}
        for mode in ("none", "cml"):
            net = network(mode == "cml", widths)
            objective = engine(net, mode, "loop", 1)
            flops[mode] = meta_step_flops(partial(objective, data), list(net.parameters()))
        ratios[f"shots{shots}"] = flops["cml"]["total"] / flops["none"]["total"]
    return ratios


def peak_step_mib(checkpoint: bool, steps: int, shots: int, widths: tuple[int, ...]) -> float:
    """Peak resident memory growth of one CML meta-step (meta-loss and backward, one task,
    ``steps`` second-order inner steps) in a fresh process: what the step really holds,
    recomputation included, which ``saved_mib`` cannot see inside checkpointed steps."""
    argv = ["--worker", str(int(checkpoint)), str(steps), str(shots), ",".join(map(str, widths))]
    args = ["-m", "cmlearn.app.bench.resnet", *argv]
    return fresh_json(args, "resnet12 memory worker", timeout=1800)["growth_mib"]


def _worker(checkpoint: bool, steps: int, shots: int, widths: tuple[int, ...]) -> None:

    torch.set_num_threads(1)
    net = network(True, widths)
    objective = engine(net, "cml", "loop", steps, checkpoint)
    data = batch(1, seed=1, shots=shots)
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark
        f.write("5")
    before = status_kib("VmRSS")
    objective(data).backward()
    print(json.dumps({"growth_mib": (status_kib("VmHWM") - before) / 1024}))


def _ratios(med: dict[str, float], best: str) -> dict[str, float]:
    """The timed ratios of the module docstring from median seconds per step."""
    ratios = {
        "cml_overhead_resnet12": med[f"engine-{best}/cml"] / med[f"engine-{best}/maml"],
        "cml_overhead_resnet12_reference": med["reference/cml"] / med["reference/maml"],
    }
    for s in ("loop", "vmap"):
        ratios[f"resnet12_engine_speedup_{s}"] = med["reference/maml"] / med[f"engine-{s}/maml"]
    return ratios


def _meta_step(objective: Callable[[TaskBatch], Tensor], net: Cooperative, data: TaskBatch):
    """One timed meta-step: the meta-loss, its backward, the gradients dropped."""

    def step() -> None:
        objective(data).backward()
        net.zero_grad(set_to_none=True)

    return step


def bench(
    quick: bool = False,
    log: Callable[[str], None] = lambda _: None,
    threads: int = 1,
    widths: tuple[int, ...] = WIDTHS,
    conv_shapes: tuple[tuple[int, int], ...] = CONV_SHAPES,
) -> dict[str, Any]:
    """Every figure of the module docstring (``widths``, ``conv_shapes``: smaller work for the
    tests)."""
    from cmlearn.app.bench.measure import Variant, saved_mib, time_interleaved

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n_tasks, repeats = (1, 2) if quick else (2, 5)
        data = batch(n_tasks)
        nets = {mode: network(mode == "cml", widths) for mode in ("none", "cml")}
        variants = {}
        for mode, net in nets.items():
            name = "maml" if mode == "none" else "cml"
            for strategy in ("loop", "vmap"):
                variants[f"engine-{strategy}/{name}"] = (engine(net, mode, strategy, 1), net)
            variants[f"reference/{name}"] = (reference(net, mode, 1), net)
        losses = {k: obj(data).item() for k, (obj, _) in variants.items()}
        for name, value in losses.items():  # the same meta-loss, or the comparison is void
            base = losses["engine-loop/" + name.rsplit("/", 1)[1]]
            if abs(value - base) > 1e-4 * max(1.0, abs(base)):
                raise RuntimeError(f"resnet12 meta-losses differ: {name} {value} vs {base}")
        # interleaved repeats, one meta-step each, after one warm-up step per variant; CPU
        # time at one thread is the work done without the time other processes held the core
        cpu: dict[str, list[float]] = {}
        steps = [
            Variant(name, _meta_step(obj, net, data), n_tasks, {}, threads, steps=1)
            for name, (obj, net) in variants.items()
        ]
        times = time_interleaved(steps, 1, repeats, 1, cpu)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        log("resnet12 median s per step: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
        best = min(("loop", "vmap"), key=lambda s: med[f"engine-{s}/maml"])
        ratios, ratios_cpu = _ratios(med, best), _ratios(med_cpu, best)
        log("resnet12 memory: MiB saved for backward per task, 1 and 5 inner steps")
        one = batch(1, seed=1)
        memory = {}
        for steps in (1, 5):
            for impl in ("engine", "reference"):
                for mode, net in nets.items():
                    objective = (
                        engine(net, mode, best, steps)
                        if impl == "engine"
                        else reference(net, mode, steps)
                    )
                    mib = saved_mib(lambda objective=objective: objective(one))
                    name = "maml" if mode == "none" else "cml"
                    memory[f"{impl}/{name}/steps{steps}"] = mib
        per_task = memory["engine/cml/steps5"]
        log("resnet12: peak memory of a CML step, 5 inner steps, with and without checkpoints")
        peak = {
            f"shots{k}/{name}": peak_step_mib(name == "checkpoint", 5, k, widths)
            for k in (1, 5)
            for name in ("plain", "checkpoint")
        }
        log("resnet12: FLOP ratio and convolution paths")
        floor = flop_ratio(widths)
        paths = conv_paths(1 if quick else 5, log, conv_shapes, threads)
        return {
            "status": "ok",
            "workload": {
                "model": "resnet12 " + "-".join(map(str, widths)),
                "image": IMAGE,
                "ways": WAYS,
                "shots": SHOTS,
                "queries": QUERIES,
                "tasks": n_tasks,
                "inner": {"lr": LR, "order": "second"},
                "gamma": GAMMA,
                "threads": threads,
            },
            "seconds": times,
            "median_s": med,
            "cpu_seconds": cpu,
            "median_cpu_s": med_cpu,
            "ratios_by_cpu_time": ratios_cpu,
            "best_strategy": best,
            "ratios": ratios,
            "memory_mib_per_task": memory,
            "peak_mib_cml_5_steps": peak,
            "checkpoint_memory_ratio": {
                f"shots{k}": peak[f"shots{k}/checkpoint"] / peak[f"shots{k}/plain"] for k in (1, 5)
            },
            "flop_ratio_cml_over_maml": floor,
            "conv_paths": paths,
            "budget_mib": BUDGET_MIB,
            "largest_meta_batch_without_chunks_5_steps": int(BUDGET_MIB // per_task),
        }
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        ckpt, steps, shots, widths = sys.argv[2:6]
        _worker(ckpt == "1", int(steps), int(shots), tuple(map(int, widths.split(","))))
    else:
        print(json.dumps(bench("--quick" in sys.argv, log=print), indent=1))
