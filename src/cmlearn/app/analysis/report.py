"""``analyze``: the Fig. 3 analyses of one or more runs, as PNGs plus ``analysis.json``.

The JSON holds every number a figure shows (and the per-task CKA behind each mean), so the
figures can be redrawn or checked without rerunning anything. Non-finite numbers are ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cmlearn.app.analysis import figures
from cmlearn.app.analysis.positions import position_shares
from cmlearn.app.analysis.records import (
    Run,
    colearner_series,
    expand_runs,
    gradient_series,
    read_metrics,
    validation_curve,
)
from cmlearn.app.analysis.representations import cka_by_layer, layer_names, task_activations
from cmlearn.app.build import build_source
from cmlearn.app.evaluate import batches, fixed_tasks
from cmlearn.app.files import atomic_text
from cmlearn.app.runs import METRICS, MODEL, load_run
from cmlearn.app.runtime import Runtime
from cmlearn.app.stats import finite, summarize
from cmlearn.core.engine import Learner
from cmlearn.core.errors import CmlearnError
from cmlearn.core.tasks import TaskBatch, TaskSource, generator

DEFAULT_TASKS = 100
POSITION_TASKS = 64  # meta-training tasks for the gradient's position shares (``positions``)
TSNE_TASKS = 3
FIGURES: dict[str, tuple[str, Callable[[list[dict], Path], Path | None]]] = {
    "fig3a": ("fig3a_validation.png", figures.validation_figure),
    "fig3b": ("fig3b_cosine.png", figures.cosine_figure),
    "fig3c": ("fig3c_grad_norms.png", figures.grad_norm_figure),
    "fig3d": ("fig3d_cka.png", figures.cka_figure),
    "colearner": ("colearner.png", figures.colearner_figure),
    "tsne": ("tsne.png", figures.tsne_figure),
}


def analyze(
    paths: list[Path],
    out: Path | None = None,
    tasks: int = DEFAULT_TASKS,
    runtime: Runtime | None = None,
    tsne_tasks: int = TSNE_TASKS,
    logged_only: bool = False,
) -> dict:
    """Analyse run folders (a compare folder counts as its runs) into ``out`` (default
    ``<first path>/analysis``); returns what ``analysis.json`` holds.

    CKA and t-SNE use the first ``tasks`` (resp. ``tsne_tasks``) seeded test tasks of each
    run's configuration, the tasks ``cmlearn eval`` scores first, adapted as it adapts them.
    ``logged_only`` reads only what training logged (no model is loaded: no CKA, positions or
    t-SNE), which takes a second per run rather than a minute.
    """
    if tasks < 1:
        raise CmlearnError(f"--tasks must be positive (got {tasks})")
    tsne_tasks = 0 if logged_only else max(0, min(tsne_tasks, tasks))
    tsne = _tsne() if tsne_tasks else None  # fail before any work if it is missing
    runs = expand_runs(paths)
    runtime = runtime or Runtime()
    out = Path(out) if out is not None else Path(paths[0]) / "analysis"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CmlearnError(f"cannot create {out}: {err.strerror or err}") from None
    sources: dict[str, TaskSource] = {}
    load = not logged_only
    results = [_analyse_run(run, tasks, tsne_tasks, tsne, runtime, sources, load) for run in runs]
    report = {
        "tasks": tasks,
        "runs": results,
        "methods": methods(results),
        "figures": {},
        "skipped_figures": {},
    }
    for key, (name, draw) in FIGURES.items():  # a figure with nothing to show is not drawn
        if draw(results, out / name) is not None:
            report["figures"][key] = name
        else:
            report["skipped_figures"][name] = figures.SKIPPED[draw.__name__]
    text = json.dumps(finite(report), indent=1, allow_nan=False) + "\n"
    atomic_text(text, out / "analysis.json")
    report["out"] = str(out)
    return report


def _analyse_run(
    run: Run,
    n_tasks: int,
    tsne_tasks: int,
    tsne: Callable[[np.ndarray, float, int], np.ndarray] | None,
    runtime: Runtime,
    sources: dict[str, TaskSource],
    load: bool = True,
) -> dict:
    cfg = run.config
    records = read_metrics(run.path)
    result = {
        "label": run.label,
        "path": str(run.path),
        "preset": cfg.preset,
        "algorithm": cfg.algorithm,
        "colearner": cfg.colearner.mode,
        "seed": cfg.train.seed,
        "validation": validation_curve(records, run.path / METRICS),
    }
    gradients = gradient_series(records, run.path / METRICS)
    result["gradients"] = gradients
    result["co_term"] = colearner_series(records, gradients, run.path / METRICS)
    skipped = None
    if not load:
        skipped = "--logged-only"
    elif not (run.path / MODEL).exists():
        skipped = f"no {MODEL} yet: training saves it at its first validation"
    if skipped:
        return result | {"cka": {"skipped": skipped}, "tsne": {"skipped": skipped}}
    cfg, learner = load_run(run.path, runtime=runtime)
    key = json.dumps([cfg.to_dict()[section] for section in ("data", "task")])  # same tasks
    if key not in sources:
        sources[key] = build_source(cfg, runtime)
    source = sources[key]
    if learner.strategy == "loop" and source.metric == "accuracy":
        # training-distribution tasks (the "analysis" stream), the run's meta-batch size
        count = max(1, POSITION_TASKS // cfg.task.meta_batch)
        drawn = [source.sample(cfg.task.meta_batch, generator("analysis", i)) for i in range(count)]
        result["positions"] = position_shares(learner, drawn)
    test = batches(fixed_tasks(source, n_tasks, cfg.eval.seed, "test"), 1)
    cka, kept = _cka(learner, test, cfg.eval_steps, tsne_tasks if tsne else 0)
    result["cka"] = cka | {"eval_seed": cfg.eval.seed}
    if tsne is None:
        result["tsne"] = {"skipped": "not asked for"}
    elif any(features.shape[0] < 3 for _, features, _ in kept):
        result["tsne"] = {"skipped": "t-SNE needs at least 3 query examples per task"}
    else:
        colour = "class" if source.metric == "accuracy" else "target"
        result["tsne"] = {
            "feature": cka["layers"][-2],
            "tasks": [_embed(tsne, i, x, y, colour, cfg.eval.seed) for i, x, y in kept],
        }
    return result


def methods(results: list[dict]) -> list[dict]:
    """Each method (preset, algorithm and co-learner mode) over its seeds: the mean and 95 %
    t-interval over seeds of what a study of the co-learner compares: L^c late in training,
    the co-term's mean gradient share per body layer, its share on positions the head never
    reads, and CKA per layer. ``n`` says how many seeds had each number."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in results:
        groups.setdefault((run["preset"], run["algorithm"], run["colearner"]), []).append(run)
    out = []
    for (preset, algorithm, mode), runs in groups.items():
        numbers: dict[str, list[float]] = {}
        for run in runs:
            co, cka, positions = run["co_term"], run["cka"], run.get("positions", {})
            found = {"co_share_where_meta_is_zero": positions.get("co_share_where_meta_is_zero")}
            if "skipped" not in co:
                found["co_loss_last_tenth"] = co["co_loss_last_tenth"]
                found |= {f"share_mean.{k}": v for k, v in co["share_mean"].items()}
            if "skipped" not in cka:
                found |= {f"cka.{k}": v for k, v in cka["mean"].items()}
            for name, value in found.items():
                if value is not None and math.isfinite(value):
                    numbers.setdefault(name, []).append(value)
        out.append(
            {
                "preset": preset,
                "method": f"{algorithm}+{mode}",
                "seeds": sorted(run["seed"] for run in runs),
                "over_seeds": {k: summarize(np.asarray(v)) for k, v in numbers.items()},
            }
        )
    return out


def _cka(
    learner: Learner, tasks: list[TaskBatch], steps: int, keep: int
) -> tuple[dict, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """Per-layer CKA before vs after adaptation on each task (one at a time, so a conv net's
    activations never pile up), with the adapted body output and query targets of the first
    ``keep`` tasks for the t-SNE."""
    was_training = learner.net.training
    learner.net.eval()  # as evaluation scores it
    names = layer_names(learner)
    body_out = names[-2]  # the last body child: the body's output
    per_task: dict[str, list[float]] = {name: [] for name in names}
    query: dict[str, list[float]] = {}
    kept = []
    try:
        for index, task in enumerate(tasks):
            before, after, scores = task_activations(learner, task, steps)
            for name, value in cka_by_layer(before, after).items():
                per_task[name].append(value)
            for name, value in scores.items():
                query.setdefault(name, []).append(value)
            if index < keep:
                kept.append((index, after[body_out].cpu(), task.query_y[0].flatten().cpu()))
    finally:
        learner.net.train(was_training)
    cka = {
        "tasks": len(tasks),
        "steps": steps,
        "mode": "cml",
        "layers": names,
        "mean": {name: _nanmean(v) for name, v in per_task.items()},
        "std": {name: _nanstd(v) for name, v in per_task.items()},
        "per_task": per_task,
        "adapted_query": {name: _nanmean(v) for name, v in query.items()},
        "note": "linear CKA of each layer's query activations (flattened per example) before "
        "vs after the evaluation adaptation; mean and std over tasks, NaN tasks left out",
    }
    return cka, kept


def _embed(
    fit: Callable[[np.ndarray, float, int], np.ndarray],
    index: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    colour: str,
    seed: int,
) -> dict:
    """A 2-d t-SNE of one task's adapted query features (perplexity capped for small sets)."""
    perplexity = min(30.0, (features.shape[0] - 1) / 3)
    points = fit(features.double().numpy(), perplexity, seed % 2**32)
    values = labels.tolist() if colour == "class" else labels.double().tolist()
    return {
        "task": index,
        "perplexity": perplexity,
        "colour": colour,
        "points": points.round(5).tolist(),
        "labels": values,
    }


def _tsne() -> Callable[[np.ndarray, float, int], np.ndarray]:
    """scikit-learn's t-SNE as ``fit(features, perplexity, seed) -> [n, 2]``, imported on use."""
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError:
        raise CmlearnError(
            "the t-SNE analysis needs scikit-learn: pip install 'cmlearn[analysis]'"
        ) from None

    def fit(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
        model = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        with threadpool_limits(torch.get_num_threads()):  # torch's thread budget, not all cores
            return model.fit_transform(features)

    return fit


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _nanstd(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite)) if finite else math.nan
