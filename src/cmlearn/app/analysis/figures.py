"""The Fig. 3 PNGs, drawn only from the numbers ``analysis.json`` stores (one per-run dict each).

A figure with nothing to show is not drawn (its function returns ``None``, ``SKIPPED`` says
why) and a PNG of that name from an earlier analysis is removed, so a folder never keeps a
stale figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from cmlearn.app.analysis.records import NO_CO_TERM  # noqa: E402

NO_GRADIENTS = "no gradient records (train.analysis_every=0, or no co-learner)"
SKIPPED = {  # why each figure may have nothing to show
    "validation_figure": "no validation records",
    "cosine_figure": NO_GRADIENTS,
    "grad_norm_figure": NO_GRADIENTS,
    "cka_figure": "no CKA: --logged-only, or no run has a saved model",
    "tsne_figure": "no t-SNE: not asked for, or no run has a saved model",
    "colearner_figure": NO_CO_TERM,
}


def readable_axes(ax, log_y: bool = False) -> None:
    """Tick labels that do not collide: at most 6 on x, thousands as ``10k``; on a log y
    axis, labelled ticks at 1-2-5 (or every integer multiple, when the data spans less than
    a decade) instead of powers of ten alone (a loss between 1.5 and 3 showed one label)."""
    ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=6, integer=True, min_n_ticks=3))
    ax.xaxis.set_major_formatter(
        ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}")
    )
    if log_y:
        low, high = ax.get_ylim()
        narrow = low > 0 and high / low < 10
        subs = tuple(range(1, 10)) if narrow else (1.0, 2.0, 5.0)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:.3g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def validation_figure(runs: list[dict], path: Path) -> Path | None:
    """Fig. 3a: validation metric against meta-iterations, one line per run."""
    curves = [r for r in runs if "skipped" not in r["validation"]]
    metrics = list(dict.fromkeys(r["validation"]["metric"] for r in curves))
    if not metrics:
        return _skip(path)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=False):
        for run in curves:
            curve = run["validation"]
            if curve["metric"] == metric:
                ax.plot(curve["steps"], curve["values"], marker="o", ms=3, label=run["label"])
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(metric.replace("_", " "))
        if metric.endswith("mse"):
            ax.set_yscale("log")
        readable_axes(ax, metric.endswith("mse"))
        ax.legend(fontsize=8)
    fig.suptitle("Validation during meta-training (Fig. 3a)")
    return _save(fig, path)


def cosine_figure(runs: list[dict], path: Path) -> Path | None:
    """Fig. 3b: cosine similarity of the meta and co gradients per body layer over training."""
    logged = [r for r in runs if "skipped" not in r["gradients"]]
    layers = _layer_union(r["gradients"]["layers"] for r in logged)
    if not layers:
        return _skip(path)
    # at least as wide as the other figures: the title is longer than one layer's panel
    fig, axes = plt.subplots(1, len(layers), figsize=(max(6.0, 3.6 * len(layers)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, layer in zip(axes, layers, strict=False):
        for run in logged:
            series = run["gradients"]["layers"].get(layer)
            if series:
                ax.plot(series["steps"], series["cosine"], lw=1, label=run["label"])
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(layer)
        ax.set_xlabel("meta-iteration")
        readable_axes(ax)
    axes[0].set_ylabel("cos(meta-gradient, co-gradient)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Gradient similarity, meta-learner vs co-learner (Fig. 3b)")
    return _save(fig, path)


def grad_norm_figure(runs: list[dict], path: Path) -> Path | None:
    """Fig. 3c: mean norm over training of each body layer's meta and co gradients."""
    logged = [r for r in runs if "skipped" not in r["gradients"]]
    layers = _layer_union(r["gradients"]["layers"] for r in logged)
    if not layers:
        return _skip(path)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(layers) * len(logged)), 3.8))
    bars = [(run, term) for run in logged for term in ("meta_norm", "co_norm")]
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(layers))
    for i, (run, term) in enumerate(bars):
        heights = [
            run["gradients"]["layers"].get(layer, {}).get("mean", {}).get(term, math.nan)
            for layer in layers
        ]
        kind = "meta" if term == "meta_norm" else "co (γ-scaled)"
        ax.bar(
            x + (i - (len(bars) - 1) / 2) * width,
            heights,
            width,
            label=f"{run['label']}: {kind}",
            hatch="" if term == "meta_norm" else "//",
        )
    ax.set_xticks(x, layers)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_ylabel("mean gradient norm over training")
    ax.set_title("Per-layer gradient norms into the body (Fig. 3c)")
    return _save(fig, path)


def cka_figure(runs: list[dict], path: Path) -> Path | None:
    """Fig. 3d: CKA of each layer's query representation before vs after adaptation."""
    done = [r for r in runs if "skipped" not in r["cka"]]
    layers = _layer_union({layer: None for layer in r["cka"]["layers"]} for r in done)
    if not layers:
        return _skip(path)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(layers) * len(done)), 3.8))
    width = 0.8 / max(len(done), 1)
    x = np.arange(len(layers))
    for i, run in enumerate(done):
        cka = run["cka"]
        ax.bar(
            x + (i - (len(done) - 1) / 2) * width,
            [_nan(cka["mean"].get(layer)) for layer in layers],
            width,
            yerr=[_nan(cka["std"].get(layer)) for layer in layers],
            capsize=2,
            label=f"{run['label']} ({cka['tasks']} tasks)",
        )
    ax.set_xticks(x, layers)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("linear CKA, before vs after")
    ax.set_title("Representation change from inner-loop adaptation (Fig. 3d)")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def tsne_figure(runs: list[dict], path: Path) -> Path | None:
    """App. E / Fig. 4: t-SNE of the adapted body output on test query sets, run × task."""
    done = [r for r in runs if "skipped" not in r["tsne"]]
    if not done:
        return _skip(path)
    cols = max([len(r["tsne"]["tasks"]) for r in done] + [1])
    rows = len(done)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 3.2 * cols), 3.0 * rows), squeeze=False)
    for row, run in zip(axes, done, strict=False):
        for ax, task in zip(row, run["tsne"]["tasks"], strict=False):
            points = np.asarray(task["points"])
            discrete = task["colour"] == "class"
            ax.scatter(
                points[:, 0],
                points[:, 1],
                c=task["labels"],
                s=8,
                cmap="tab10" if discrete else "viridis",
            )
            ax.set_title(f"{run['label']}\ntest task {task['task']}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    fig.suptitle("t-SNE of adapted query features (colour: class or target)")
    return _save(fig, path)


def colearner_figure(runs: list[dict], path: Path) -> Path | None:
    """The co-learner over training, one colour per method (its seeds thin, their mean thick):
    the training L^c, the co-term's share of the gradient into the whole body, and that share
    per body layer averaged over training (bars: mean over seeds, whiskers: min to max)."""
    logged = [r for r in runs if "skipped" not in r["co_term"]]
    if not logged:
        return _skip(path)
    groups: dict[str, list[dict]] = {}
    presets = {r["preset"] for r in logged}
    for run in logged:
        name = f"{run['algorithm']}+{run['colearner']}"
        groups.setdefault(f"{run['preset']}: {name}" if len(presets) > 1 else name, []).append(run)
    layers = _layer_union(r["co_term"]["share_mean"] for r in logged)
    fig, axes = plt.subplots(1, 3, figsize=(15.0, 3.8), width_ratios=(1, 1, 1.3))
    width = 0.8 / len(groups)
    for i, (name, members) in enumerate(groups.items()):
        colour = f"C{i % 10}"
        for ax, series in zip(
            axes[:2],
            (
                [r["co_term"]["co_loss"] for r in members],
                [r["co_term"]["share"].get("body") for r in members],
            ),
            strict=True,
        ):
            _seed_lines(ax, [s for s in series if s and s["steps"]], colour, name)
        means = np.array(
            [[_nan(r["co_term"]["share_mean"].get(k)) for k in layers] for r in members]
        )
        centre = np.nanmean(means, 0)
        ax = axes[2]
        x = np.arange(len(layers)) + (i - (len(groups) - 1) / 2) * width
        ax.bar(
            x,
            centre,
            width,
            color=colour,
            label=f"{name} ({len(members)} run{'s' * (len(members) > 1)})",
        )
        if len(members) > 1:
            low, high = np.nanmin(means, 0), np.nanmax(means, 0)
            ax.errorbar(x, centre, [centre - low, high - centre], fmt="none", ecolor="k", lw=0.8)
    axes[0].set_ylabel("training L^c")
    axes[0].set_yscale("log")
    readable_axes(axes[0], log_y=True)
    axes[1].set_ylabel("co share of body gradient")
    readable_axes(axes[1])
    for ax in axes[:2]:
        ax.set_xlabel("meta-iteration")
        if ax.get_legend_handles_labels()[0]:  # a method whose seeds logged different steps
            ax.legend(fontsize=8)
    axes[2].set_xticks(np.arange(len(layers)), layers, rotation=30, fontsize=8)
    axes[2].set_ylabel("co share, mean over training")
    axes[2].legend(fontsize=8)
    fig.suptitle(
        "The co-learner's loss and its share ‖γ∇L^c‖ / (‖∇L^m‖ + ‖γ∇L^c‖) of the body gradient"
    )
    return _save(fig, path)


def _seed_lines(ax, series: list[dict], colour: str, label: str) -> None:
    """One thin line per seed and, where every seed logged the same steps, their mean thick."""
    for s in series:
        ax.plot(s["steps"], s["values"], color=colour, lw=0.6, alpha=0.35)
    if series and all(s["steps"] == series[0]["steps"] for s in series):
        ax.plot(
            series[0]["steps"],
            np.nanmean([s["values"] for s in series], 0),
            color=colour,
            lw=1.8,
            label=label,
        )


def _layer_union(maps) -> list[str]:
    """Layer names in first-seen order across runs."""
    return list(dict.fromkeys(name for m in maps for name in m))


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _skip(path: Path) -> None:
    """Nothing to draw: no placeholder, and no stale PNG of an earlier analysis."""
    Path(path).unlink(missing_ok=True)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
