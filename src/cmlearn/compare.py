"""Train several methods over several seeds and compare them on the same test tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cmlearn import CmlearnError
from cmlearn.algorithms import ALGORITHMS
from cmlearn.build import build_source
from cmlearn.cml import CO_MODES
from cmlearn.config import Config
from cmlearn.evaluate import CHUNK, fixed_tasks, paired, run_scores, summarize
from cmlearn.runs import CHECKPOINT, RunFolder, load_run, read_config
from cmlearn.runtime import Runtime
from cmlearn.train import train


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
    score averaged over seeds, with its CI over tasks, and the CI of the seed means) and
    ``paired`` (each method minus the first on the same tasks and seeds) and ``paired_base``
    (each ``algorithm+colearner`` minus its ``algorithm``, when both ran).
    """
    if dagger not in ("none", *DAGGER):
        raise CmlearnError(f"--dagger must be one of none, {', '.join(DAGGER)} (got {dagger!r})")
    parsed = [Method.parse(m).resolved(base.algorithm) for m in methods]
    for what, items in (("method", [m.name for m in parsed]), ("seed", seeds)):
        twice = sorted({str(i) for i in items if items.count(i) > 1})
        if twice:
            raise CmlearnError(f"{what} {', '.join(twice)} given twice; each runs once")
    if len({(m.algorithm, m.colearner) for m in parsed}) != len(parsed):
        raise CmlearnError(
            f"each method may appear once in --methods (cml is {base.algorithm}+cml here)"
        )
    runtime = runtime or Runtime()
    source = build_source(base, runtime)
    tlp = base.eval.protocol == "tlp"
    tasks = fixed_tasks(source, base.eval.tasks, base.eval.seed, "test")
    per_task: dict[str, list[np.ndarray]] = {}
    results, runs = [], {}
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
            cfg = method.config(base, seed)
            run = run_method(cfg, out / f"{method.name}-s{seed}", progress, runtime)
            runs[f"{method.name}-s{seed}"] = run
            if tlp:  # the scores the run stored at its best validation (its own test tasks)
                scored = {method.name: np.array(RunFolder(run).read_tlp_test()["values"])}
            else:
                _, learner = load_run(run, runtime=runtime)
                scored = {  # the best checkpoint, or the top-k ensemble
                    name: run_scores(
                        run,
                        cfg,
                        learner,
                        tasks,
                        source.metric,
                        mode,
                        cfg.eval_steps,
                        cfg.eval.batch or CHUNK,
                    )
                    for name, mode in modes.items()
                }
            for name, values in scored.items():
                per_task.setdefault(name, []).append(values)
                results.append(
                    {
                        "method": name,
                        "seed": seed,
                        "metric": source.metric,
                        **summarize(values),
                        "train_seconds": RunFolder(run).train_seconds(),
                        "run": str(run),
                    }
                )
    stacks = {name: np.stack(values) for name, values in per_task.items()}  # [seeds, tasks]
    summary = []
    for name, method in rows:
        stack = stacks[name]
        row = {"method": name, "metric": source.metric, "seeds": len(seeds)}
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
    return {
        "preset": base.preset,
        "metric": source.metric,
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
        "runs": {k: str(v) for k, v in runs.items()},
    }


DAGGER = {"code": "cml-dagger-code", "paper": "cml-dagger"}  # --dagger -> evaluation mode
UNADAPTED = "†-unadapted"  # the row suffix of a CL run scored with ϕ never adapted


def published_rows(preset: str) -> dict[str, dict[str, float]]:
    """The paper's numbers for ``preset``, per table that lists it (``{}`` if none)."""
    if not preset:
        return {}
    from cmlearn.presets import TABLES

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
        seed = "" if np.isnan(row["seed_ci95"]) else f" [±{row['seed_ci95']:.4f}]"
        lines.append(f"{row['method']:<14}{row['mean']:.4f} ± {row['tlp_interval']:.4f}{seed}")
    return "\n".join(lines)


def _cell(stat: dict | None, fmt: str) -> str:
    if stat is None:
        return "—"
    seed = "" if np.isnan(stat["seed_ci95"]) else f" [±{stat['seed_ci95']:.4f}]"
    return f"{stat['mean']:{fmt}} ± {stat['ci95']:.4f}{seed}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"
