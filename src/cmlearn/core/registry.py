"""Name → (builder, options dataclass) tables for datasets, models and co-learner heads.

Each entry registers itself in the module that defines it, with an options dataclass whose
``__post_init__`` validates its own fields: an invalid option cannot be constructed, so it is
checked once, where the entry lives. ``build.py`` only looks names up and assembles. A name
``package.module:Name`` that is not registered is the user's own part, imported on first use
(``cmlearn.app.parts`` installs the importer with ``resolve_user_parts``). An entry may carry
facts the application keeps about it (``catalog``: for a dataset, where its files go and how
to get them); the core stores them and never reads them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cmlearn.core.errors import CmlearnError


@dataclass(frozen=True)
class NoOptions:
    """For entries without settings."""


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Any]
    options: type
    help: str
    catalog: object | None = None  # the application's facts about the entry (opaque here)


class Registry:
    """A named table of entries of one kind (``dataset``, ``model``, ``colearner``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    def register(
        self, name: str, options: type = NoOptions, help: str = "", catalog: object | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@MODELS.register("conv4", Conv4Options, "…")`` on a builder;
        ``catalog`` is kept on the entry as given."""

        def add(build: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = help or (build.__doc__ or "")
            self.entries[name] = Entry(name, build, options, doc, catalog)
            return build

        return add

    def get(self, name: str) -> Entry:
        if name not in self.entries and ":" in name and _user_parts:  # package.module:Name
            self.entries[name] = _user_parts[0](self.kind, name)
        if name not in self.entries:
            raise CmlearnError(
                f"unknown {self.kind} {name!r}; choose from {', '.join(sorted(self.entries))}"
            )
        return self.entries[name]

    def make_options(self, name: str, values: dict[str, Any] | None = None) -> Any:
        """The options of entry ``name`` from a plain dict (unknown keys are errors)."""
        cls = self.get(name).options
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CmlearnError(
                f"{self.kind} {name!r} has no option {unknown[0]!r}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        base = cls()
        typed = {k: coerce(v, getattr(base, k), f"{name}.{k}") for k, v in values.items()}
        try:
            return cls(**typed)
        except (TypeError, ValueError) as err:
            raise CmlearnError(f"{self.kind} {name!r}: {err}") from None


_user_parts: list[Callable[[str, str], Entry]] = []  # the importer of a user's parts, once set


def resolve_user_parts(make_entry: Callable[[str, str], Entry]) -> None:
    """Name the user's parts by import path: ``make_entry(kind, "pkg.mod:Name")`` builds the
    entry of a name no module registered (set once, by ``cmlearn.app.parts``)."""
    _user_parts[:] = [make_entry]


DATASETS = Registry("dataset")  # name -> a data object (a pool of classes, a task family)
SAMPLERS = Registry("task sampler")  # a data object's ``kind`` -> its TaskSource
MODELS = Registry("model")  # name -> a BodyHead backbone
COLEARNERS = Registry("co-learner")  # name -> a head for a given feature shape


INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only (Python's int() takes any script's)
EXPECTED = {bool: "true or false", int: "an integer written with the digits 0-9"}


def coerce(value: Any, current: Any, key: str) -> Any:
    """``value`` (from JSON or the command line) as the type of the default ``current``."""
    try:
        if isinstance(current, bool):  # true or false, no other spelling (1, TRUE, yes)
            if isinstance(value, str) and value in ("true", "false"):
                return value == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(current, tuple):
            items = value if isinstance(value, list | tuple) else [value]
            kind = type(current[0]) if current else int
            return tuple(coerce(v, kind(), key) for v in items)
        if isinstance(current, int):  # an integer as written: not 5.0, 1e1, ٣ or １２
            if isinstance(value, str) and INTEGER.fullmatch(value):
                return int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if isinstance(current, float):
            if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
                raise ValueError
            return float(value)
        if isinstance(value, dict | list):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        expected = EXPECTED.get(type(current), type(current).__name__)
        raise CmlearnError(f"bad value {value!r} for {key} (expected {expected})") from None


def check(condition: bool, message: str) -> None:
    """Options validation: raise ``ValueError`` (turned into a one-line error) unless true."""
    if not condition:
        raise ValueError(message)
