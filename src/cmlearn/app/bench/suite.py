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
import io
import json
import os
import random
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cmlearn.app.bench.measure import (  # noqa: F401  (the suite's public names)
    CONV_CHANNELS,
    FULL_STEPS,
    GAMMA,
    LR,
    QUICK_STEPS,
    REPEAT_FACTOR,
    Forward,
    Plan,
    Results,
    Setup,
    Variant,
    _explicit,
    busy_cpu_s,
    check_same,
    conv_setup,
    engine_objective,
    explicit_forward,
    kernel_split,
    label,
    machine,
    matmul_step,
    meta_step,
    meta_step_flops,
    module_forward,
    objective_of,
    op_calls,
    reference_objective,
    saved_mib,
    sinusoid_setup,
    time_interleaved,
    variant,
)
from cmlearn.app.build import build_learner, build_source
from cmlearn.app.config import Config, get_preset
from cmlearn.app.data.omniglot import zip_paths
from cmlearn.app.runtime import Runtime
from cmlearn.app.train import make_optimizer, outer_step
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.models import Cooperative
from cmlearn.core.tasks import ClassificationSource, TaskBatch
from cmlearn.core.tasks.batch import generator, split_queries

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
    from cmlearn.app.bench.ddp import GOAL, ddp_2proc_speedup

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
    from cmlearn.app.bench.graph import GOALS as GRAPH_GOALS
    from cmlearn.app.bench.graph import bench

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
    from cmlearn.app.bench.resnet import GOALS as RESNET_GOALS
    from cmlearn.app.bench.resnet import bench

    log(f"resnet12: 5-way 1-shot at 32 px, second order, {threads} thread(s)")
    resnet = bench(quick, log, threads)
    res.ratios.update(resnet["ratios"])
    res.best["resnet12_best_strategy"] = resnet["best_strategy"]
    for key, (op, target) in RESNET_GOALS.items():
        res.goals[key] = goal_entry(resnet["ratios"][key], op, target)
    return resnet


def bench_leaks(res: Results, quick: bool, log: Callable[[str], None]) -> list[dict]:
    """Resident-memory growth of real training runs between two late marks (see ``leaks``)."""
    from cmlearn.app.bench.leaks import BOUND_MIB, WORKLOADS, memory_growth

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
