"""Run configuration: nested dataclasses, dotted ``--set key=value`` overrides, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cmlearn import CmlearnError
from cmlearn.algorithms import ALGORITHMS, algorithm_rule
from cmlearn.algorithms.rule import InnerRule
from cmlearn.cml import CO_MODES
from cmlearn.models.conv import BN_MODES


@dataclass
class TaskConfig:
    family: str = "sinusoid"
    shots: int = 5  # K support points (regression) or shots per class
    queries: int = 10  # query points per task during meta-training
    eval_queries: int = 100  # query points per validation / test task
    meta_batch: int = 4


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: tuple[int, ...] = (40, 40)
    strategy: str = "auto"  # auto | batched | vmap | loop (auto: the measured best per model)
    bn: str = "transductive"  # transductive | running


@dataclass
class CoLearnerConfig:
    mode: str = "none"  # none | cml | random | cl
    gamma: float = 0.2
    point: str = ""  # a child of the body; "" = the body's output
    hidden: tuple[int, ...] = (40,)
    conv_layers: int = 2


@dataclass
class TrainConfig:
    steps: int = 70_000
    meta_lr: float = 1e-3  # Adam β for ψ, θ (and learned step sizes)
    colearner_lr: float = 0.0  # Adam lr of ϕ's own param group; 0 = meta_lr
    val_every: int = 1000
    val_tasks: int = 200
    log_every: int = 100
    analysis_every: int = 0  # >0: log per-layer meta/co gradient norms and cosine similarity
    threads: int = 0  # torch threads; 0 = leave torch's default
    seed: int = 0


@dataclass
class EvalConfig:
    tasks: int = 2000
    steps: int = 0  # inner steps at test time; 0 = inner.steps
    seed: int = 1234  # test tasks depend only on this seed: every method sees the same tasks


@dataclass
class Config:
    preset: str = ""
    algorithm: str = "maml"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inner: InnerRule = field(default_factory=InnerRule)
    colearner: CoLearnerConfig = field(default_factory=CoLearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def with_algorithm(self, name: str) -> Config:
        """This config with ``name``'s inner-loop overrides applied."""
        if name not in ALGORITHMS:
            raise CmlearnError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
        return dataclasses.replace(self, algorithm=name, inner=algorithm_rule(name, self.inner))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        cfg = cls()
        for key, value in _flatten(data).items():
            cfg = _set(cfg, key, value)
        return cfg

    def override(self, assignments: list[str]) -> Config:
        """Apply ``key=value`` strings, e.g. ``colearner.gamma=0.5`` or ``model.hidden=40,40``.

        ``algorithm=NAME`` goes through ``with_algorithm`` so the inner rule follows the name.
        """
        cfg = self
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise CmlearnError(f"--set expects key=value, got {item!r}")
            if key.strip() == "algorithm":
                cfg = cfg.with_algorithm(raw.strip())
            else:
                cfg = _set(cfg, key.strip(), _parse(raw.strip()))
        return cfg

    def validate(self) -> Config:
        """Reject settings that cannot run, with one clear sentence."""
        t, tr, co = self.task, self.train, self.colearner
        checks = [
            (t.shots > 0, f"task.shots must be positive (got {t.shots})"),
            (t.queries > 0, f"task.queries must be positive (got {t.queries})"),
            (t.eval_queries > 0, "task.eval_queries must be positive"),
            (t.meta_batch > 0, "task.meta_batch must be positive"),
            (len(self.model.hidden) > 0, "model.hidden needs at least one layer"),
            (all(h > 0 for h in self.model.hidden), "model.hidden widths must be positive"),
            (all(h > 0 for h in co.hidden), "colearner.hidden widths must be positive"),
            (self.model.bn in BN_MODES, f"model.bn must be one of {BN_MODES}"),
            (self.algorithm in ALGORITHMS, f"algorithm must be one of {', '.join(ALGORITHMS)}"),
            (self.inner.lr > 0, "inner.lr must be positive (freeze a group with *_scale=0)"),
            (self.inner.msl_anneal >= 0, "inner.msl_anneal must not be negative"),
            (tr.steps >= 0, "train.steps must not be negative"),
            (tr.meta_lr > 0, "train.meta_lr must be positive"),
            (tr.colearner_lr >= 0, "train.colearner_lr must not be negative (0 = meta_lr)"),
            (tr.val_every > 0, "train.val_every must be positive"),
            (tr.val_tasks > 0, "train.val_tasks must be positive"),
            (tr.log_every > 0, "train.log_every must be positive"),
            (tr.analysis_every >= 0, "train.analysis_every must not be negative (0 = off)"),
            (tr.threads >= 0, "train.threads must not be negative (0 = torch's default)"),
            (self.eval.tasks > 1, "eval.tasks must be at least 2 for a confidence interval"),
            (self.eval.steps >= 0, "eval.steps must not be negative (0 = inner.steps)"),
            (co.mode in CO_MODES, f"colearner.mode must be one of {CO_MODES}"),
            (co.gamma >= 0, "colearner.gamma must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise CmlearnError(message)
        return self


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if "," in raw:
            return [_parse(part) for part in raw.split(",") if part]
        return raw


def _set(obj: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    names = {f.name: f for f in dataclasses.fields(obj)}
    if head not in names:
        where = dotted if not rest else head
        raise CmlearnError(f"unknown config key {where!r}; known: {', '.join(names)}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise CmlearnError(f"config key {head!r} has no field {rest!r}")
        new = _set(current, rest, value)
    else:
        if dataclasses.is_dataclass(current):
            raise CmlearnError(f"config key {head!r} is a section; set one of its fields")
        new = _coerce(value, current, dotted)
    try:
        return dataclasses.replace(obj, **{head: new})
    except ValueError as err:
        raise CmlearnError(str(err)) from None


def _coerce(value: Any, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            return bool(value)
        if isinstance(current, tuple):
            items = value if isinstance(value, list | tuple) else [value]
            return tuple(int(v) for v in items)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(current, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise CmlearnError(
            f"bad value {value!r} for {key} (expected {type(current).__name__})"
        ) from None
