"""Run configuration: typed sections, dotted ``--set key=value`` overrides, JSON round trip.

Every section checks its own fields when it is constructed, so an invalid ``Config`` cannot
exist and nothing downstream validates again. Sections that name a registry entry
(``data``, ``model``, ``colearner.head``) are ``{name, options}``; the options are the
entry's own dataclass. ``model.hidden`` is accepted as a shorthand for
``model.options.hidden``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cmlearn.app.data  # noqa: F401  (registers the datasets)  # noqa: F401  (registers the datasets)
import cmlearn.core.models  # noqa: F401  (registers the backbones and co-learner heads)  # noqa: F401  (registers the backbones and co-learner heads)
from cmlearn.app import parts  # noqa: F401  (the user's own parts, named by import path)
from cmlearn.app.logs import SINKS
from cmlearn.app.presets import PRESETS
from cmlearn.core.algorithms import ALGORITHMS, algorithm_rule
from cmlearn.core.algorithms.rule import InnerRule
from cmlearn.core.cml import CO_MODES
from cmlearn.core.engine import STRATEGIES
from cmlearn.core.errors import CmlearnError
from cmlearn.core.registry import COLEARNERS, DATASETS, MODELS, Registry, check, coerce

MAX_STEPS = 10**9  # anything larger is a typo, not a run
MAX_THREADS = 1024  # torch allocates per thread: 100000 threads is a MemoryError, not a run
MAX_EVAL_TASKS = 1_000_000
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Choice:
    """A registry entry by name, with that entry's options (a dict is converted and checked)."""

    name: str
    options: Any = None
    registry: ClassVar[Registry]

    def __post_init__(self) -> None:
        entry = self.registry.get(self.name)
        opts = self.options
        if opts is None or isinstance(opts, dict):
            opts = self.registry.make_options(self.name, opts)
        elif not isinstance(opts, entry.options):
            raise CmlearnError(f"options of {self.registry.kind} {self.name!r} have the wrong type")
        object.__setattr__(self, "options", opts)


class DataChoice(Choice):
    registry = DATASETS


class ModelChoice(Choice):
    registry = MODELS


class HeadChoice(Choice):
    registry = COLEARNERS


@dataclass
class TaskConfig:
    ways: int = 5  # N classes per task (classification; regression ignores it)
    shots: int = 5  # K support examples (per class for classification)
    queries: int = 10  # query examples (per class) in meta-training tasks
    eval_queries: int = 100  # query examples (per class) in test tasks (and validation ones)
    val_queries: int = 0  # query examples (per class) in validation tasks; 0 = eval_queries
    meta_batch: int = 4
    context: int = 0  # node tasks: two sets of this many task nodes for AMM-GNN's modulation

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries", "eval_queries", "meta_batch"):
            check(
                getattr(self, name) > 0, f"task.{name} must be positive (got {getattr(self, name)})"
            )
        check(self.val_queries >= 0, f"task.val_queries must be >= 0 (got {self.val_queries})")
        check(0 <= self.context <= 10_000, "task.context must be in [0, 10000]")
        check(self.meta_batch <= 100_000, "task.meta_batch must be at most 100000")


@dataclass
class CoLearnerConfig:
    mode: str = "none"  # none | cml | random | cl
    gamma: float = 0.2
    point: str = ""  # a child of the body; "" = the body's output
    head: HeadChoice = field(default_factory=lambda: HeadChoice("mlp"))

    def __post_init__(self) -> None:
        check(self.mode in CO_MODES, f"colearner.mode must be one of {CO_MODES}")
        check(
            math.isfinite(self.gamma) and self.gamma >= 0,
            "colearner.gamma must be a finite non-negative number",
        )


@dataclass
class TrainConfig:
    steps: int = 70_000
    meta_lr: float = 1e-3  # Adam β for ψ, θ (and learned step sizes)
    colearner_lr: float = 0.0  # Adam lr of ϕ's own param group; 0 = meta_lr
    weight_decay: float = 0.0  # Adam's coupled L2 (torch's ``weight_decay``; TLP: 5e-4)
    patience: int = 0  # >0: stop after this many validations without a strict improvement
    task_chunk: int = 0  # >0: accumulate the meta-gradient over chunks of this many tasks
    val_every: int = 1000
    val_tasks: int = 200
    log_every: int = 100
    analysis_every: int = 0  # >0: log per-layer meta/co gradient norms and cosine similarity
    strategy: str = "auto"  # auto | batched | vmap | loop (auto: the measured best per model)
    threads: int = 0  # torch threads; 0 = leave torch's default
    seed: int = 0
    log: str = "jsonl"  # jsonl | tensorboard (metrics.jsonl is always written)
    epoch_steps: int = 500  # iterations per epoch (MAML++: 500) for MSL and the cosine meta-lr
    lr_schedule: str = "constant"  # constant | cosine (MAML++: per epoch, T_max = all epochs)
    min_lr: float = 0.0  # cosine's eta_min (MAML++: 1e-5 Omniglot, 1e-3 miniImageNet)
    grad_clamp: float = 0.0  # >0: clamp every meta-gradient element to ±this (MAML++: 10)
    sam_rho: float = 0.0  # >0: Sharp-MAML's outer SAM radius α_up (2× the cost per step)

    def __post_init__(self) -> None:
        check(0 <= self.steps <= MAX_STEPS, f"train.steps must be in [0, {MAX_STEPS}]")
        check(
            math.isfinite(self.meta_lr) and self.meta_lr > 0,
            "train.meta_lr must be a finite positive number",
        )
        check(
            math.isfinite(self.colearner_lr) and self.colearner_lr >= 0,
            "train.colearner_lr must be finite and not negative (0 = meta_lr)",
        )
        check(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "train.weight_decay must be finite and not negative",
        )
        check(self.patience >= 0, "train.patience must not be negative (0 = no early stop)")
        check(self.task_chunk >= 0, "train.task_chunk must not be negative (0 = all tasks)")
        check(self.val_every > 0, "train.val_every must be positive")
        check(0 < self.val_tasks <= 1_000_000, "train.val_tasks must be in [1, 1000000]")
        check(self.log_every > 0, "train.log_every must be positive")
        check(self.analysis_every >= 0, "train.analysis_every must not be negative (0 = off)")
        check(self.strategy in STRATEGIES, f"train.strategy must be one of {STRATEGIES}")
        check(
            0 <= self.threads <= MAX_THREADS,
            f"train.threads must be in [0, {MAX_THREADS}] (0 = torch's default)",
        )
        check(self.seed >= 0, f"train.seed must not be negative (got {self.seed})")
        check(self.log in SINKS, f"train.log must be one of {', '.join(SINKS)}")
        check(0 < self.epoch_steps <= MAX_STEPS, f"train.epoch_steps must be in [1, {MAX_STEPS}]")
        check(
            self.lr_schedule in LR_SCHEDULES,
            f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}",
        )
        for name in ("min_lr", "grad_clamp", "sam_rho"):
            value = getattr(self, name)
            check(
                math.isfinite(value) and value >= 0,
                f"train.{name} must be finite and not negative (got {value})",
            )


PROTOCOLS = ("fixed", "tlp")


@dataclass
class EvalConfig:
    tasks: int = 2000
    steps: int = 0  # inner steps at validation and test time; 0 = inner.steps
    seed: int = 1234  # validation and test tasks depend only on this seed
    batch: int = 0  # tasks adapted at once at validation and test; 0 = 500 (bounds memory)
    protocol: str = "fixed"  # fixed | tlp (fresh tasks each validation, test at each new best)
    ensemble: int = 0  # >0: test = mean logits of the k best validation checkpoints (MAML++)

    def __post_init__(self) -> None:
        check(2 <= self.tasks <= MAX_EVAL_TASKS, f"eval.tasks must be in [2, {MAX_EVAL_TASKS}]")
        check(self.protocol in PROTOCOLS, f"eval.protocol must be one of {', '.join(PROTOCOLS)}")
        check(self.batch >= 0, "eval.batch must not be negative (0 = 500)")
        check(self.steps >= 0, "eval.steps must not be negative (0 = inner.steps)")
        check(self.seed >= 0, f"eval.seed must not be negative (got {self.seed})")
        check(0 <= self.ensemble <= 100, "eval.ensemble must be in [0, 100] (0 = best checkpoint)")
        check(
            not (self.ensemble and self.protocol == "tlp"),
            "eval.ensemble needs eval.protocol=fixed (TLP tests at each new best)",
        )


@dataclass
class Config:
    preset: str = ""
    algorithm: str = "maml"
    data: DataChoice = field(default_factory=lambda: DataChoice("sinusoid"))
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelChoice = field(default_factory=lambda: ModelChoice("mlp"))
    inner: InnerRule = field(default_factory=InnerRule)
    colearner: CoLearnerConfig = field(default_factory=CoLearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check(self.algorithm in ALGORITHMS, f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if self.preset:  # a label, but one a user can trust: it must name a real preset
            check(
                self.preset in PRESETS,
                f"unknown preset {self.preset!r}; run 'cmlearn presets' to list them",
            )

    @property
    def eval_steps(self) -> int:
        """Inner steps of validation and test adaptation (one procedure for both)."""
        return self.eval.steps or self.inner.steps

    def with_algorithm(self, name: str) -> Config:
        """This config with ``name``'s inner-loop overrides applied."""
        if name not in ALGORITHMS:
            raise CmlearnError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
        return dataclasses.replace(self, algorithm=name, inner=algorithm_rule(name, self.inner))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Defaults, then the algorithm's inner-loop overrides, then every key of ``data`` (so
        a preset naming ``fomaml`` is first order without saying so, and may still change one
        of its fields, e.g. MAML++'s ``inner.msl_epochs``)."""
        cfg = cls()
        if "algorithm" in data:
            cfg = cfg.with_algorithm(str(data["algorithm"]))
        for key, value in _flatten(data).items():
            if key in RETIRED:  # a field older run folders still carry
                if value != RETIRED[key][0]:
                    raise CmlearnError(f"config key {key}={value!r}: {RETIRED[key][1]}")
                continue
            cfg = _set(cfg, key, value)
        return cfg

    def override(self, assignments: list[str]) -> Config:
        """Apply ``key=value`` strings, e.g. ``colearner.gamma=0.5`` or ``model.hidden=40,40``.

        ``algorithm=NAME`` goes through ``with_algorithm`` so the inner rule follows the name.
        """
        return self.apply([_split(item) for item in assignments])

    def apply(self, assignments: list[tuple[str, Any]]) -> Config:
        """Apply typed ``(dotted key, value)`` pairs in order (the CLI's path, no strings)."""
        cfg = self
        for key, value in assignments:
            if key == "algorithm":
                cfg = cfg.with_algorithm(str(value))
            else:
                cfg = _set(cfg, key, value)
        return cfg


# Retired keys: (the value that meant "off", why another value cannot be honoured). A config
# from an older run folder loads when the key held that value.
RETIRED: dict[str, tuple[Any, str]] = {
    "inner.msl_anneal": (
        0.0,
        "the fractional multi-step-loss anneal was replaced by MAML++'s epoch schedule "
        "(inner.msl_epochs); this run cannot be resumed or re-scored by this version",
    ),
}


def _split(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise CmlearnError(f"--set expects key=value, got {item!r}")
    return key.strip(), _parse(raw.strip())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "options":
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


def _set(obj: Any, dotted: str, value: Any, prefix: str = "") -> Any:
    """``obj`` with the field at ``dotted`` set to ``value`` (``prefix``: the sections above
    ``obj``, so an error names the whole key)."""
    head, _, rest = dotted.partition(".")
    if isinstance(obj, Choice):
        return _set_choice(obj, head, rest, value, dotted)
    names = {f.name: f for f in dataclasses.fields(obj)}
    if head not in names:
        where = dotted if not rest else head
        raise CmlearnError(f"unknown config key {where!r}; known: {', '.join(names)}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise CmlearnError(f"config key {head!r} has no field {rest!r}")
        new = _set(current, rest, value, f"{prefix}{head}.")
    else:
        if isinstance(current, Choice) and isinstance(value, dict):
            new = type(current)(value.get("name", current.name), value.get("options"))
        elif dataclasses.is_dataclass(current):
            raise CmlearnError(f"config key {head!r} is a section; set one of its fields")
        else:
            new = coerce(value, current, prefix + dotted)
    try:
        return dataclasses.replace(obj, **{head: new})
    except ValueError as err:
        raise CmlearnError(str(err)) from None


def _set_choice(choice: Choice, head: str, rest: str, value: Any, dotted: str) -> Choice:
    """``name`` switches the entry (its options start from defaults); anything else is an
    option: ``options.x`` or the shorthand ``x``."""
    if head == "name" and not rest:
        return type(choice)(str(value)) if value != choice.name else choice
    if head == "options":
        if not rest:
            if not isinstance(value, dict):
                raise CmlearnError(
                    f"config key {dotted!r} takes an object of options, e.g. "
                    f'{{"{next(iter(dataclasses.asdict(choice.options)), "x")}": …}}'
                )
            return type(choice)(choice.name, value)
        head, _, rest = rest.partition(".")
    if rest:
        raise CmlearnError(f"config key {dotted!r}: options are not nested")
    values = dataclasses.asdict(choice.options) | {head: value}
    return type(choice)(choice.name, values)


def get_preset(name: str) -> Config:
    """The resolved configuration of preset ``name`` (``cmlearn presets`` lists them)."""
    if name not in PRESETS:
        raise CmlearnError(f"unknown preset {name!r}; run 'cmlearn presets' to list them")
    return Config.from_dict({"preset": name, **PRESETS[name][1]})
