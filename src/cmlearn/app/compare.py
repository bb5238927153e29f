"""Train several methods over several seeds and compare them on the same test tasks."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cmlearn.app.build import build_source
from cmlearn.app.config import Config, _flatten
from cmlearn.app.evaluate import EvalSpec, fixed_tasks, run_scores, tasks_digest
from cmlearn.app.runs import (
    CHECKPOINT,
    CONFIG,
    RunFolder,
    claim_compare,
    load_run,
    read_config,
)
from cmlearn.app.runtime import Runtime
from cmlearn.app.stats import compare_pair, paired, summarize
from cmlearn.app.train import train
from cmlearn.core.algorithms import ALGORITHMS
from cmlearn.core.cml import CO_MODES
from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks import TaskSource


@dataclass(frozen=True)
class Method:
    """``algorithm[+colearner]``; a co-learner mode alone (``cml``) keeps the preset's
    algorithm (``maml`` for the image presets, ``fomaml`` for the graph presets)."""

    name: str
    algorithm: str
    colearner: str

    @classmethod
    def parse(cls, text: str) -> Method:
        text = text.strip()
        if text in CO_MODES and text != "none":
            return cls(text, "", text)
        algorithm, plus, mode = text.partition("+")
        mode = mode or ("" if plus else "none")  # "maml+" names no co-learner: refused
        if algorithm not in ALGORITHMS or mode not in CO_MODES:
            raise CmlearnError(
                f"unknown method {text!r}: write algorithm[+colearner] with algorithm in "
                f"{', '.join(ALGORITHMS)} and colearner in {', '.join(CO_MODES)}"
            )
        return cls(text, algorithm, mode)

    def resolved(self, algorithm: str) -> Method:
        """The method with a bare co-learner mode's algorithm filled in."""
        return replace(self, algorithm=self.algorithm or algorithm)

    def config(self, base: Config, seed: int) -> Config:
        return base.apply(
            [
                ("algorithm", self.algorithm or base.algorithm),
                ("colearner.mode", self.colearner),
                ("train.seed", seed),
            ]
        )


def run_method(cfg: Config, out: Path, progress: bool, runtime: Runtime | None = None) -> Path:
    """Train into ``out``, or reuse / resume a run of the same configuration found there
    (so runs trained separately, e.g. two at a time, are picked up by ``compare``)."""
    if (out / CHECKPOINT).exists():
        if read_config(out) != cfg:
            raise CmlearnError(f"{out} holds a run with another configuration; use another --out")
        train(cfg, out, resume=True, progress=progress, runtime=runtime)
    else:
        train(cfg, out, progress=progress, runtime=runtime)
    return out


def compare(
    base: Config,
    methods: list[str],
    seeds: list[int],
    out: Path,
    progress: bool = True,
    runtime: Runtime | None = None,
    dagger: str = "code",
) -> dict:
    """Every (method, seed) trained, then scored on one fixed set of test tasks.

    A run with a co-learner (``cml``, ``cl``) is scored twice: with the meta-learner (CML;
    for CL, CL⋆) and with the co-learner (a ``†`` row: CML†, CL†), as the official
    ``test_cml.py`` computes it (``dagger="code"``: adapt (ψ, θ) with the meta-learner's
    loss, predict with ϕ on ψ'), or as the paper's Eq. 9 writes it (``"paper"``), or not.

    Returns ``results`` (one row per method and seed), ``summary`` (per method: the per-task
    score averaged over seeds, with its CI over tasks, and the CI of the seed means),
    ``paired`` (each method minus the first on the same tasks and seeds), ``paired_base``
    (each ``algorithm+colearner`` minus its ``algorithm``, when both ran) and ``pairs`` (every
    later row minus every earlier one: over tasks, per seed and over seeds, and by a
    hierarchical bootstrap; ``cmlearn.app.stats``).
    """
    parsed = _methods(methods, [base.algorithm] * len(methods), seeds, dagger)
    claim_compare(out)  # a compare folder, never a train run's or a foreign one
    runtime = runtime or Runtime()
    source = build_source(base, runtime)
    runs: dict[tuple[str, int], tuple[Path, Config]] = {}
    for method in parsed:
        for seed in seeds:
            cfg = method.config(base, seed)
            run = run_method(cfg, out / f"{method.name}-s{seed}", progress, runtime)
            runs[method.name, seed] = (run, cfg)
    scored = score_runs(base, parsed, seeds, runs, runtime, dagger, {_task_key(base): source})
    return _report(base, seeds, runs, scored, dagger)


def compare_folders(
    folders: list[Path],
    methods: list[str],
    seeds: list[int] | None = None,
    runtime: Runtime | None = None,
    dagger: str = "code",
) -> dict:
    """``compare``'s report on runs trained before, gathered from ``folders`` (each holding
    ``METHOD-sSEED`` runs, as ``compare --out`` writes them): a later study adds seeds in a
    folder of its own, and this pairs them with the old ones without training anything.

    ``seeds`` (default: those every method has) must each be found once per method across the
    folders. The runs of a method must agree in every setting but the seed, and all methods
    in every setting but the algorithm's, the inner rule and the co-learner mode (keys that
    only log or place work, ``RECORDING``, may differ); and all must be tested on the same
    tasks (their ``tasks_digest``). Anything else is refused, naming the runs and keys."""
    runtime = runtime or Runtime()
    base, parsed, seeds, runs = gather_runs(folders, methods, seeds, dagger)
    scored = score_runs(base, parsed, seeds, runs, runtime, dagger)
    return _report(base, seeds, runs, scored, dagger)


def gather_runs(
    folders: list[Path], methods: list[str], seeds: list[int] | None, dagger: str = "code"
) -> tuple[Config, list[Method], list[int], dict[tuple[str, int], tuple[Path, Config]]]:
    """The runs ``compare_folders`` reads, checked as it says: the configuration of the first
    method's first seed (the study's), the methods, the seeds and ``(method, seed) -> (run,
    its configuration)``."""
    names = [m.strip() for m in methods]
    found = find_runs(folders, names, seeds)
    seeds = list(seeds) if seeds is not None else sorted({seed for _, seed in found})
    configs = {key: read_config(path) for key, path in found.items()}
    parsed = _methods(names, [configs[n, seeds[0]].algorithm for n in names], seeds, dagger)
    for method in parsed:
        first = configs[method.name, seeds[0]]
        for seed in seeds:
            cfg, run = configs[method.name, seed], found[method.name, seed]
            ran = (cfg.algorithm, cfg.colearner.mode, cfg.train.seed)
            if ran != (method.algorithm, method.colearner, seed):
                raise CmlearnError(
                    f"{run} holds a {cfg.algorithm}+{cfg.colearner.mode} run of seed "
                    f"{cfg.train.seed}, not {method.algorithm}+{method.colearner} of seed {seed}"
                )
            _same_study(found[method.name, seeds[0]], first, run, cfg, ())
    key = (names[0], seeds[0])
    for name in names[1:]:
        other = (name, seeds[0])
        _same_study(found[key], configs[key], found[other], configs[other], PER_METHOD)
    return configs[key], parsed, seeds, {k: (found[k], cfg) for k, cfg in configs.items()}


RECORDING = ("train.log", "train.analysis_every", "train.threads", "eval.batch")  # and log_every
PER_METHOD = ("algorithm", "inner.", "colearner.mode")  # what a method sets in ``Method.config``
RUN_NAME = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")


def find_runs(
    folders: list[Path], methods: list[str], seeds: list[int] | None = None
) -> dict[tuple[str, int], Path]:
    """``(method, seed) -> FOLDER/METHOD-sSEED`` over ``folders``, for every method and
    ``seeds`` (default: the seeds every method has). A run found in two folders, or missing,
    is refused."""
    if not folders:
        raise CmlearnError("--from needs at least one folder")
    found: dict[tuple[str, int], list[Path]] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise CmlearnError(f"{folder} is not a folder")
        for run in sorted(Path(folder).iterdir()):
            match = RUN_NAME.match(run.name)
            if match and match["method"] in methods and (run / CONFIG).is_file():
                found.setdefault((match["method"], int(match["seed"])), []).append(run)
    twice = [paths for paths in found.values() if len(paths) > 1]
    if twice:
        raise CmlearnError(
            f"{twice[0][0].name} is in {' and '.join(str(p.parent) for p in twice[0])}; "
            "each run may be found once"
        )
    if seeds is None:
        common = [{s for m, s in found if m == method} for method in methods]
        seeds = sorted(set.intersection(*common)) if common else []
        if not seeds:
            raise CmlearnError(
                f"no seed has a run of every method ({', '.join(methods)}) in "
                + ", ".join(str(f) for f in folders)
            )
    missing = [f"{m}-s{s}" for m in methods for s in seeds if (m, s) not in found]
    if missing:
        raise CmlearnError(f"no run {', '.join(missing)} in {', '.join(str(f) for f in folders)}")
    return {(m, s): found[m, s][0] for m in methods for s in seeds}


def _same_study(run_a: Path, a: Config, run_b: Path, b: Config, allowed: tuple[str, ...]) -> None:
    """Refuse two runs whose settings differ beyond the seed, ``RECORDING`` and ``allowed``.
    A run without a co-learner has no use for the co-learner's settings: beside one, those
    may differ (MAML and CML trained by separate ``fit`` calls with their own defaults)."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    skip = ("train.seed", *RECORDING, *allowed)
    if "none" in (a.colearner.mode, b.colearner.mode):
        skip += ("colearner.", "train.colearner_lr")
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    keys = [k for k in keys if not k.startswith(skip)]
    if keys:
        raise CmlearnError(
            f"{run_a} and {run_b} differ in {', '.join(keys)}: not runs of one study"
        )


def _methods(
    methods: list[str], algorithms: list[str], seeds: list[int], dagger: str
) -> list[Method]:
    """Parse and check ``--methods``, ``--seeds`` and ``--dagger``; a bare co-learner mode
    (``cml``) takes the algorithm at its place in ``algorithms``."""
    if dagger not in ("none", *DAGGER):
        raise CmlearnError(f"--dagger must be one of none, {', '.join(DAGGER)} (got {dagger!r})")
    parsed = [Method.parse(m) for m in methods]
    for what, items in (("method", [m.name for m in parsed]), ("seed", seeds)):
        twice = sorted({str(i) for i in items if items.count(i) > 1})
        if twice:
            raise CmlearnError(f"{what} {', '.join(twice)} given twice; each runs once")
    parsed = [m.resolved(a) for m, a in zip(parsed, algorithms, strict=True)]
    if len({(m.algorithm, m.colearner) for m in parsed}) != len(parsed):
        raise CmlearnError(
            f"each method may appear once in --methods (cml is {algorithms[0]}+cml here)"
        )
    return parsed


def _task_key(cfg: Config) -> str:
    """What a run's test tasks depend on: its data, task settings and evaluation tasks."""
    return json.dumps(
        [cfg.to_dict()["data"], cfg.to_dict()["task"], cfg.eval.tasks, cfg.eval.seed],
        sort_keys=True,
        default=str,
    )


@dataclass
class Scored:
    """Every run of a study scored: ``stacks`` holds per row (a method, or its † scoring)
    the per-task scores ``[seeds, tasks]``; ``tasks`` is the test tasks' ``tasks_digest``
    ("" under TLP, where each run has tasks of its own)."""

    metric: str
    rows: list[tuple[str, Method]]  # (row name, the method whose runs it scores)
    stacks: dict[str, np.ndarray]
    results: list[dict]
    tasks: str


def score_runs(
    base: Config,
    parsed: list[Method],
    seeds: list[int],
    runs: dict[tuple[str, int], tuple[Path, Config]],
    runtime: Runtime,
    dagger: str,
    sources: dict[str, TaskSource] | None = None,
) -> Scored:
    """Score every run (``run_scores``: cached) on its test tasks. ``sources`` holds task
    sources already built, by ``_task_key``; the others are built once each. Runs tested on
    different tasks are refused."""
    tlp = base.eval.protocol == "tlp"
    sources = sources or {}
    tests: dict[str, tuple[TaskSource, list]] = {}  # task key -> (source, test tasks)
    for _, cfg in runs.values():
        key = _task_key(cfg)
        if key not in tests:
            source = sources[key] if key in sources else build_source(cfg, runtime)
            tests[key] = (source, fixed_tasks(source, cfg.eval.tasks, cfg.eval.seed, "test"))
    metric = next(iter(tests.values()))[0].metric
    digests = {key: "" if tlp else tasks_digest(tasks) for key, (_, tasks) in tests.items()}
    if len(set(digests.values())) > 1:  # another data or sampler setting, other tasks
        first = next(iter(digests.values()))
        keys = [next(iter(digests)), next(k for k, d in digests.items() if d != first)]
        a, b = (next(str(p) for p, c in runs.values() if _task_key(c) == k) for k in keys)
        raise CmlearnError(f"{a} and {b} were tested on different tasks; nothing to pair")
    per_task: dict[str, list[np.ndarray]] = {}
    results = []
    rows: list[tuple[str, Method]] = []  # (row name, the method whose runs it scores)
    for method in parsed:
        modes = {method.name: "cml"}
        if dagger != "none" and not tlp and method.colearner in ("cml", "cl"):
            modes[method.name + "†"] = DAGGER[dagger]  # CML† (CL†): the co-learner's output
            if method.colearner == "cl" and dagger == "code":  # Table 4's "CL† w/o adaptation"
                # (--dagger paper's CL† adapts ψ alone with ϕ's loss: ϕ is never adapted there)
                modes[method.name + UNADAPTED] = "cml-dagger-unadapted"
        rows += [(name, method) for name in modes]
        for seed in seeds:
            run, cfg = runs[method.name, seed]
            source, tasks = tests[_task_key(cfg)]
            if tlp:  # the scores the run stored at its best validation (its own test tasks)
                scored = {method.name: np.array(RunFolder(run).read_tlp_test()["values"])}
            else:
                _, learner = load_run(run, runtime=runtime, source=source)
                scored = {  # the best checkpoint, or the top-k ensemble
                    name: run_scores(run, cfg, learner, tasks, EvalSpec.of(cfg, metric, mode))
                    for name, mode in modes.items()
                }
            for name, values in scored.items():
                per_task.setdefault(name, []).append(values)
                results.append(
                    {
                        "method": name,
                        "seed": seed,
                        "metric": metric,
                        **summarize(values),
                        "train_seconds": RunFolder(run).train_seconds(),
                        "run": str(run),
                    }
                )
    stacks = {name: np.stack(values) for name, values in per_task.items()}  # [seeds, tasks]
    return Scored(metric, rows, stacks, results, next(iter(digests.values())))


def _report(
    base: Config,
    seeds: list[int],
    runs: dict[tuple[str, int], tuple[Path, Config]],
    scored: Scored,
    dagger: str,
) -> dict:
    """``compare``'s report of a study's scores."""
    tlp = base.eval.protocol == "tlp"
    metric, rows, stacks, results = scored.metric, scored.rows, scored.stacks, scored.results
    parsed = [method for name, method in rows if name == method.name]
    summary = []
    for name, method in rows:
        stack = stacks[name]
        row = {"method": name, "metric": metric, "seeds": len(seeds)}
        row |= summarize(stack.mean(0))
        row["seed_ci95"] = summarize(stack.mean(1))["ci95"]
        # training wall time per run, on the row that owns the runs († rows score the same runs)
        times = [r["train_seconds"] for r in results if r["method"] == name]
        owned = name == method.name and None not in times
        row["train_seconds"] = float(np.median(times)) if owned else None
        if tlp:  # TLP's print: mean of seed means ± 1.96 · mean per-seed std / √tasks
            row["tlp_interval"] = float(1.96 * stack.std(1).mean() / np.sqrt(stack.shape[1]))
        summary.append(row)
    first = parsed[0].name
    plain = {m.algorithm: m.name for m in parsed if m.colearner == "none"}
    bases = {
        name: plain[m.algorithm]
        for name, m in rows
        if m.colearner != "none" and m.algorithm in plain
    }
    names = [name for name, _ in rows]
    return {
        "preset": base.preset,
        "metric": metric,
        "n_tasks": base.eval.tasks,
        "eval_seed": base.eval.seed,
        "seeds": seeds,
        "results": results,
        "summary": summary,
        "protocol": base.eval.protocol,
        "dagger": "none" if tlp else dagger,
        "published": published_rows(base.preset),
        # TLP: each run tested on its own fresh tasks, so there is no pairing by task
        "paired": []
        if tlp
        else [_paired(stacks, name, first) for name, _ in rows if name != first],
        "paired_base": [] if tlp else [_paired(stacks, n, a) for n, a in bases.items()],
        "pairs": []
        if tlp
        else [
            {"method": b, "baseline": a, **compare_pair(stacks[b], stacks[a])}
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        ],
        "runs": {f"{name}-s{seed}": str(run) for (name, seed), (run, _) in runs.items()},
        "tasks_digest": scored.tasks,
    }


DAGGER = {"code": "cml-dagger-code", "paper": "cml-dagger"}  # --dagger -> evaluation mode
UNADAPTED = "†-unadapted"  # the row suffix of a CL run scored with ϕ never adapted


def published_rows(preset: str) -> dict[str, dict[str, float]]:
    """The paper's numbers for ``preset``, per table that lists it (``{}`` if none)."""
    if not preset:
        return {}
    from cmlearn.app.presets import TABLES

    return {  # NaN (the paper's "failed to converge") as None, so the JSON stays valid
        str(t): {k: None if math.isnan(v) else v for k, v in rows[preset].items()}
        for t, rows in TABLES.items()
        if preset in rows
    }


def _paired(stacks: dict[str, np.ndarray], method: str, baseline: str) -> dict:
    """``method − baseline`` per task (seed-averaged), CI over tasks and over seed means."""
    a, b = stacks[method], stacks[baseline]
    out = {"method": method, "baseline": baseline, **paired(a.mean(0), b.mean(0))}
    out["seed_ci95"] = summarize(a.mean(1) - b.mean(1))["ci95"]
    return out


def format_table(report: dict) -> str:
    """A plain-text table of a ``compare`` report: ± is a 95% CI over test tasks, [±] over seeds."""
    metric = report["metric"]
    if report.get("protocol") == "tlp":
        return _format_tlp(report)
    first = report["summary"][0]["method"]
    lines = [
        f"{'preset ' + report['preset'] if report['preset'] else 'your runs'}: test {metric}, "
        f"{report['n_tasks']} tasks (eval seed "
        f"{report['eval_seed']}), seeds {report['seeds']}. ± = 95% CI over tasks, "
        "[±] = 95% CI over seed means",
        f"{'method':<14}{metric:>28}{'Δ vs ' + first + ' (paired)':>30}"
        f"{'Δ vs own base (paired)':>32}{'train s/run':>13}",
    ]
    vs_first = {p["method"]: p for p in report["paired"]}
    vs_base = {p["method"]: p for p in report.get("paired_base", [])}
    for row in report["summary"]:
        lines.append(
            f"{row['method']:<14}{_cell(row, '.4f'):>28}"
            f"{_cell(vs_first.get(row['method']), '+.4f'):>30}"
            f"{_cell(vs_base.get(row['method']), '+.4f'):>32}"
            f"{_seconds(row.get('train_seconds')):>13}"
        )
    if any(row["method"].endswith("†") for row in report["summary"]):
        lines.append(
            f"† rows: the co-learner's output ({report['dagger']}'s CML†: "
            + (
                "adapt ψ, θ with the meta-learner's loss, predict with ϕ)"
                if report["dagger"] == "code"
                else "adapt ψ with the co-learner's loss, Eq. 9)"
            )
        )
    if any(row["method"].endswith(UNADAPTED) for row in report["summary"]):
        lines.append(
            f"{UNADAPTED} rows: CL† with ϕ not adapted (ψ, θ adapt with the meta-learner's "
            "loss; Table 4's CL† w/o adaptation)"
        )
    lines.append("train s/run: median training wall seconds per run (validation included)")
    lines += _format_pairs(report.get("pairs", []))
    for table, row in report.get("published", {}).items():
        cells = ", ".join(f"{k} {'failed' if v is None else v}" for k, v in row.items())
        lines.append(f"paper, Table {table} (%, not our tasks or seeds): {cells}")
    return "\n".join(lines)


def _format_tlp(report: dict) -> str:
    lines = [
        f"preset {report['preset']}, TLP-FSNC protocol: test {report['metric']} at the best "
        f"validation, {report['n_tasks']} fresh tasks per run, seeds {report['seeds']}. "
        "± = TLP's interval (1.96 × mean per-seed std / √tasks), [±] = 95% CI over seeds"
    ]
    for row in report["summary"]:
        seed = "" if _missing(row["seed_ci95"]) else f" [±{row['seed_ci95']:.4f}]"
        lines.append(f"{row['method']:<14}{row['mean']:.4f} ± {row['tlp_interval']:.4f}{seed}")
    return "\n".join(lines)


def _format_pairs(pairs: list[dict]) -> list[str]:
    """Every pair, ``method − baseline`` on the same tasks and seeds, four ways."""
    if not pairs:
        return []
    head = ("pair", "over tasks", "per seed", "over seeds", "bootstrap")
    rows = [head] + [
        (
            f"Δ {p['method']} − {p['baseline']}",
            _pm(p["tasks"]["mean"], p["tasks"]["ci95"]),
            " ".join(f"{d:+.4f}" for d in p["seeds"]["deltas"]),
            _pm(p["seeds"]["mean"], p["seeds"]["ci95"]),
            f"[{p['bootstrap']['low']:+.4f}, {p['bootstrap']['high']:+.4f}]",
        )
        for p in pairs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    resamples = pairs[0]["bootstrap"]["resamples"]
    return [
        "pairs: later row − earlier row on the same tasks and seeds, 95% intervals. over tasks: "
        "± t over the seed-averaged per-task Δ; per seed: each seed's Δ;",
        "over seeds: ± t over those (n−1 dof); bootstrap: hierarchical (seeds, then tasks "
        f"within each seed; {resamples} resamples), percentile",
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows),
    ]


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:+.4f}" + ("" if _missing(half) else f" ± {half:.4f}")


def _cell(stat: dict | None, fmt: str) -> str:
    if stat is None:
        return "—"
    seed = "" if _missing(stat["seed_ci95"]) else f" [±{stat['seed_ci95']:.4f}]"
    return f"{stat['mean']:{fmt}} ± {stat['ci95']:.4f}{seed}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"
