"""Run folders and what their ``metrics.jsonl`` logged: validation curves and gradient records.

Anything malformed is a one-line ``CmlearnError`` naming the file, except a last line with no
newline: a run still writing (or killed mid-write) leaves one, and training drops it on resume.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cmlearn.app.config import Config
from cmlearn.app.runs import CONFIG, METRICS, read_config
from cmlearn.core.errors import CmlearnError

GRADIENT_FIELDS = ("meta_norm", "co_norm", "cosine")


@dataclass(frozen=True)
class Run:
    """A run folder with its configuration and a label unique among the runs analysed."""

    path: Path
    config: Config
    label: str


def expand_runs(paths: list[Path]) -> list[Run]:
    """Run folders from the arguments: a run folder is itself, a ``compare`` folder is its run
    subfolders (``maml-s0``, ``cml-s0``, …) in name order. Labels are ``algorithm+mode sSEED``,
    with ``parent/folder`` added where two runs would share one."""
    if not paths:
        raise CmlearnError("analyze needs at least one run folder")
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise CmlearnError(f"{path} is not a run folder (no such directory)")
        if (path / CONFIG).exists():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and (p / CONFIG).exists())
        if not children:
            raise CmlearnError(f"{path} is neither a run folder nor a compare folder (no {CONFIG})")
        found.extend(children)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    configs = [read_config(p) for p in unique]
    labels = [f"{c.algorithm}+{c.colearner.mode} s{c.train.seed}" for c in configs]
    return [
        Run(p, c, label if labels.count(label) == 1 else f"{label} ({p.parent.name}/{p.name})")
        for p, c, label in zip(unique, configs, labels, strict=True)
    ]


def read_metrics(run: Path) -> list[dict]:
    """Every record of a run's ``metrics.jsonl`` (each a JSON object with an integer step)."""
    path = Path(run) / METRICS
    if not path.exists():
        raise CmlearnError(f"{run} is not a run folder (no {METRICS})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CmlearnError(f"cannot read {path}: {err}") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]  # half-written by a live or killed run
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CmlearnError(f"corrupt {path}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not _is_int(record.get("step")):
            raise CmlearnError(f"corrupt {path}: line {number} has no integer 'step'")
        records.append(record)
    return records


def validation_curve(records: list[dict], path: Path | str = METRICS) -> dict:
    """Fig. 3a data: the validation metric against the step, or ``skipped`` when none."""
    keys = sorted({k for r in records for k in r if k.startswith("val_")})
    if not keys:
        return {"skipped": "no validation records yet"}
    key = keys[0]
    points = [(r["step"], _number(r[key], key, path)) for r in records if key in r]
    return {"metric": key, "steps": [s for s, _ in points], "values": [v for _, v in points]}


def gradient_series(records: list[dict], path: Path | str = METRICS) -> dict:
    """Fig. 3b / 3c data: per body layer, the meta and co gradient norms and their cosine at
    every logged step, plus their means over training; ``skipped`` when nothing was logged."""
    logged = [r for r in records if "gradients" in r]
    if not logged:
        return {
            "skipped": "no gradient records: trained with train.analysis_every=0 "
            "(runs without a co-learner log the meta norms only)"
        }
    layers: dict[str, dict[str, list[float]]] = {}
    for record in logged:
        stats = record["gradients"]
        if not isinstance(stats, dict):
            raise CmlearnError(
                f"corrupt {path}: step {record['step']} 'gradients' is not an object"
            )
        for layer, values in stats.items():
            if not isinstance(values, dict) or any(f not in values for f in GRADIENT_FIELDS):
                raise CmlearnError(
                    f"corrupt {path}: step {record['step']} layer {layer!r} lacks "
                    f"{', '.join(GRADIENT_FIELDS)}"
                )
            series = layers.setdefault(layer, {"steps": [], **{f: [] for f in GRADIENT_FIELDS}})
            series["steps"].append(record["step"])
            for f in GRADIENT_FIELDS:
                series[f].append(_number(values[f], f, path))
    for series in layers.values():
        series["mean"] = {f: _mean(series[f]) for f in GRADIENT_FIELDS}
    return {
        "records": len(logged),
        "note": "norms and cosine over each layer's weight and bias together; the co-learner "
        "term is already scaled by gamma; meta-batch mean before the outer update",
        "layers": layers,
    }


NO_CO_TERM = "no co-learner term logged (no co-learner, or train.analysis_every=0)"


def colearner_series(records: list[dict], gradients: dict, path: Path | str = METRICS) -> dict:
    """The co-learner's side of training: the logged training L^c at each log step and, at each
    analysis step, the co-term's share of the gradient into the body,
    ``‖γ∇L^c‖ / (‖∇L^m‖ + ‖γ∇L^c‖)``, per layer and for the whole body (its norms are the root
    of the layers' summed squares). 0 means the co-learner adds nothing, ½ as much as the
    meta-loss. ``gradients`` is ``gradient_series(records)``. ``skipped`` for a run without a
    co-learner term."""
    losses = [
        (r["step"], _number(r["train_co_loss"], "train_co_loss", path))
        for r in records
        if "train_co_loss" in r
    ]
    layers = {
        name: series
        for name, series in gradients.get("layers", {}).items()
        if not any(math.isnan(c) for c in series["co_norm"])  # MAML logs the meta norms only
    }
    if not losses and not layers:
        return {"skipped": NO_CO_TERM}
    share = {
        name: {"steps": s["steps"], "values": list(map(_share, s["meta_norm"], s["co_norm"]))}
        for name, s in layers.items()
    }
    steps = [s["steps"] for s in layers.values()]
    if steps and all(s == steps[0] for s in steps):
        meta, co = (
            [math.hypot(*at) for at in zip(*(s[k] for s in layers.values()), strict=True)]
            for k in ("meta_norm", "co_norm")
        )
        share = {"body": {"steps": steps[0], "values": list(map(_share, meta, co))}, **share}
    tail = [v for _, v in losses[-max(1, len(losses) // 10) :]]
    return {
        "co_loss": {"steps": [s for s, _ in losses], "values": [v for _, v in losses]},
        "co_loss_last_tenth": _mean(tail) if tail else math.nan,
        "share": share,
        "share_mean": {name: _mean(s["values"]) for name, s in share.items()},
        "note": "share = |gamma grad L^c| / (|grad L^m| + |gamma grad L^c|) into the body; "
        "co_loss_last_tenth: mean of the last tenth of the logged training L^c",
    }


def _share(meta: float, co: float) -> float:
    total = meta + co
    return co / total if total > 0 else math.nan


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object, name: str, path: Path | str) -> float:
    if value is None:  # a non-finite value written as null
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CmlearnError(f"corrupt {path}: {name} is {value!r}, not a number")
    return float(value)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
