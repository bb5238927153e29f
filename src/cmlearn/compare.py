"""Train several methods over several seeds and compare them on the same test tasks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmlearn import CmlearnError
from cmlearn.algorithms import ALGORITHMS
from cmlearn.build import build_source
from cmlearn.cml import CO_MODES
from cmlearn.config import Config
from cmlearn.evaluate import TEST, fixed_tasks, paired, scores, summarize
from cmlearn.train import CHECKPOINT, CONFIG, load_run, train


@dataclass(frozen=True)
class Method:
    """``algorithm[+colearner]``; ``cml`` alone means ``maml+cml``."""

    name: str
    algorithm: str
    colearner: str

    @classmethod
    def parse(cls, text: str) -> Method:
        text = text.strip()
        if text in CO_MODES and text != "none":
            return cls(text, "maml", text)
        algorithm, _, mode = text.partition("+")
        mode = mode or "none"
        if algorithm not in ALGORITHMS or mode not in CO_MODES:
            raise CmlearnError(
                f"unknown method {text!r}: write algorithm[+colearner] with algorithm in "
                f"{', '.join(ALGORITHMS)} and colearner in {', '.join(CO_MODES)}"
            )
        return cls(text, algorithm, mode)

    def config(self, base: Config, seed: int) -> Config:
        cfg = base.with_algorithm(self.algorithm)
        return cfg.override([f"colearner.mode={self.colearner}", f"train.seed={seed}"])


def run_method(cfg: Config, out: Path, progress: bool) -> Path:
    """Train into ``out``, or reuse / resume a run of the same configuration found there."""
    if (out / CHECKPOINT).exists():
        saved = Config.from_dict(json.loads((out / CONFIG).read_text()))
        if saved != cfg:
            raise CmlearnError(f"{out} holds a run with another configuration; use another --out")
        train(cfg, out, resume=True, progress=progress)
    else:
        train(cfg, out, progress=progress)
    return out


def compare(
    base: Config, methods: list[str], seeds: list[int], out: Path, progress: bool = True
) -> dict:
    """Every (method, seed) trained, then scored on one fixed set of test tasks.

    Returns ``results`` (one row per method and seed), ``summary`` (per method: the per-task
    score averaged over seeds, with its CI over tasks, and the CI of the seed means) and
    ``paired`` (each method minus the first on the same tasks and seeds).
    """
    parsed = [Method.parse(m) for m in methods]
    if len({m.name for m in parsed}) != len(parsed):
        raise CmlearnError("each method may appear once in --methods")
    base.validate()
    source = build_source(base)
    tasks = fixed_tasks(source, base.eval.tasks, base.eval.seed, TEST, "test", base.eval.chunk)
    per_task: dict[str, list[np.ndarray]] = {}
    results, runs = [], {}
    for method in parsed:
        for seed in seeds:
            cfg = method.config(base, seed)
            run = run_method(cfg, out / f"{method.name}-s{seed}", progress)
            runs[f"{method.name}-s{seed}"] = run
            _, learner = load_run(run)
            values = scores(learner, tasks, source.metric, "cml", base.eval.steps)
            per_task.setdefault(method.name, []).append(values)
            results.append(
                {
                    "method": method.name,
                    "seed": seed,
                    "metric": source.metric,
                    **summarize(values),
                    "run": str(run),
                }
            )
    first = parsed[0].name
    summary, pairs = [], []
    for method in parsed:
        stack = np.stack(per_task[method.name])  # [seeds, tasks]
        row = {
            "method": method.name,
            "metric": source.metric,
            "seeds": len(seeds),
            **summarize(stack.mean(0)),
        }
        row["seed_ci95"] = summarize(stack.mean(1))["ci95"]
        summary.append(row)
        if method.name != first:
            baseline = np.stack(per_task[first])
            pair = {
                "method": method.name,
                "baseline": first,
                **paired(stack.mean(0), baseline.mean(0)),
            }
            pair["seed_ci95"] = summarize(stack.mean(1) - baseline.mean(1))["ci95"]
            pairs.append(pair)
    return {
        "preset": base.preset,
        "metric": source.metric,
        "n_tasks": base.eval.tasks,
        "eval_seed": base.eval.seed,
        "seeds": seeds,
        "results": results,
        "summary": summary,
        "paired": pairs,
        "runs": {k: str(v) for k, v in runs.items()},
    }


def format_table(report: dict) -> str:
    """A plain-text table of a ``compare`` report."""
    metric = report["metric"]
    lines = [
        f"preset {report['preset']}: test {metric} on {report['n_tasks']} tasks "
        f"(eval seed {report['eval_seed']}), seeds {report['seeds']}; mean ± 95% CI over tasks",
        f"{'method':<16}{metric:>26}{'Δ vs ' + report['summary'][0]['method'] + ' (paired)':>30}"
        f"{'seed-to-seed ±':>16}",
    ]
    deltas = {p["method"]: p for p in report["paired"]}
    for row in report["summary"]:
        delta = deltas.get(row["method"])
        dtext = f"{delta['mean']:+.4f} ± {delta['ci95']:.4f}" if delta else "—"
        seed = row["seed_ci95"]
        stext = "—" if np.isnan(seed) else f"{seed:.4f}"
        lines.append(
            f"{row['method']:<16}{row['mean']:>16.4f} ± {row['ci95']:<7.4f}{dtext:>30}{stext:>16}"
        )
    return "\n".join(lines)
