"""The user's own parts named by import path (``package.module:Name``) in the registries.

A model, dataset or co-learner head that is not a registered name but contains ``:`` is
imported on first use (``Registry.get``) and becomes an entry like any other: its options
are the keyword parameters of ``Name``'s signature that have defaults (typed by their
defaults, checked like every option), so a run's ``config.json`` names the part and its
options, and ``cmlearn eval``, ``compare``, ``analyze`` and ``train --resume`` rebuild it
from the folder. The module is imported as Python would (the working directory is searched
last, as ``python -m`` does); it may also be a ``.py`` file (``path/to/script.py:Name``): a
script's own classes are recorded so (``import_path``). A part that cannot be imported is one
line naming it.

- model ``Name(**options)``: any ``nn.Module`` (``out_features`` and ``input_shape``
  parameters are filled from the tasks); the extra option ``head`` names its head
  (``core.api.split_model``).
- dataset ``Name(**options)``: ``(X, y)``, a ``Dataset`` of ``(x, label)``, a
  ``ClassDataset`` (``cmlearn.class_dataset``: choose the splits), a ``RegressionFamily``, or
  a whole task source (``core.sources.as_data``).
- co-learner ``Name(**options)``: a module taking ``feature_shape`` and/or ``out_features``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmlearn.core.api import split_model
from cmlearn.core.errors import CmlearnError
from cmlearn.core.models.cooperative import example_input
from cmlearn.core.registry import SAMPLERS, Entry, resolve_user_parts
from cmlearn.core.sources import as_data
from cmlearn.core.tasks.sinusoid import SinusoidSource

FILLED = {  # parameters cmlearn fills itself, per registry kind
    "model": ("out_features", "input_shape"),
    "dataset": (),
    "co-learner": ("feature_shape", "out_features"),
}
PATH = re.compile(r"^[^:]+:[A-Za-z_][A-Za-z0-9_.]*$")


def load_object(path: str) -> Any:
    """The object named ``module:Name`` (``Name`` may be dotted) or ``file.py:Name``."""
    if not PATH.match(path):
        raise CmlearnError(f"{path!r} is not an import path; write package.module:Name")
    module_name, _, attr = path.rpartition(":")
    try:
        if module_name.endswith(".py"):
            module = _load_file(Path(module_name))
        else:  # from the working directory too, as ``python -m`` would (the last place looked)
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except CmlearnError:
        raise
    except Exception as err:  # anything the user's module raises while importing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CmlearnError(f"cannot import {path}: {first}") from None
    return obj


def _load_file(path: Path) -> Any:
    """A ``.py`` file as a module (once per process), its folder importable for its imports."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    name = "cmlearn_user_" + re.sub(r"\W", "_", str(path))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_path(obj: Any) -> str:
    """``obj``'s import path (a string is returned as it is). A class or function of the
    running script (``__main__``) is named by the script's file, so the shell can import it."""
    if isinstance(obj, str):
        return obj
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module is None or not name or "<" in name:
        raise CmlearnError(
            f"{obj!r} has no import path: pass a class or function defined at module level"
        )
    if module == "__main__" or module.startswith("cmlearn_user_"):
        file = getattr(sys.modules.get(module), "__file__", None)
        if file is None:
            raise CmlearnError(
                f"{name} is defined in an interactive session; put it in a module so a run "
                "folder can name it"
            )
        return f"{Path(file).resolve()}:{name}"
    return f"{module}:{name}"


def user_entry(kind: str, path: str) -> Entry:
    """A registry entry of ``kind`` for the object at ``path``."""
    obj = load_object(path)
    if not callable(obj):
        raise CmlearnError(f"{path} is not a class or function")
    options, accepts = _options_class(obj, kind, path)
    if kind == "model":
        options = dataclasses.make_dataclass(
            options.__name__,
            [("head", str, dataclasses.field(default=""))],
            bases=(options,),
            frozen=True,
        )
    builders = {"model": _model, "dataset": _dataset, "co-learner": _colearner}
    if kind not in builders:
        raise CmlearnError(f"a {kind} cannot be named by import path ({path})")

    def build(opts: Any, *args: Any) -> Any:
        return builders[kind](obj, path, accepts, opts, *args)

    return Entry(path, build, options, (obj.__doc__ or "").strip().split("\n")[0])


def _options_class(obj: Any, kind: str, path: str) -> tuple[type, frozenset[str]]:
    """A frozen dataclass of ``obj``'s defaulted keyword parameters, and every parameter
    name it takes; a parameter without a default that cmlearn cannot fill is an error."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return dataclasses.make_dataclass("Options", [], frozen=True), frozenset()
    fields = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in FILLED[kind]:
            continue
        if p.default is p.empty:
            raise CmlearnError(
                f"{path}: parameter {p.name!r} has no default; give it one so a run folder "
                "can rebuild the part from its options"
            )
        default = tuple(p.default) if isinstance(p.default, list) else p.default
        fields.append((p.name, type(default), dataclasses.field(default=default)))
    name = path.rpartition(":")[2].replace(".", "_") + "Options"
    names = frozenset(p.name for p in params)
    return dataclasses.make_dataclass(name, fields, frozen=True), names


def _call(obj: Any, path: str, kwargs: dict) -> Any:
    try:
        return obj(**kwargs)
    except CmlearnError:
        raise
    except Exception as err:
        raise CmlearnError(f"{path}({_args(kwargs)}) failed: {err}") from None


def _args(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _model(obj: Any, path: str, accepts: frozenset[str], opts: Any, source: Any, rows: int = 0):
    if rows:
        raise CmlearnError(
            f"per-step BatchNorm (MAML++'s inner.per_step_bn) needs a cmlearn backbone; {path} "
            "has its own layers: set inner.per_step_bn=false"
        )
    kwargs = {k: v for k, v in dataclasses.asdict(opts).items() if k != "head"}
    kwargs |= {"out_features": source.out_features} if "out_features" in accepts else {}
    kwargs |= {"input_shape": tuple(source.input_shape)} if "input_shape" in accepts else {}
    module = _call(obj, path, kwargs)
    if not isinstance(module, nn.Module):
        raise CmlearnError(f"{path} gave a {type(module).__name__}, not an nn.Module")
    return split_model(module, opts.head, example_input(source))


def _dataset(obj: Any, path: str, accepts: frozenset[str], opts: Any, root: Any, cache: Any):
    name = path.rpartition(":")[2]
    return as_data(_call(obj, path, dataclasses.asdict(opts)), name)


def _colearner(obj: Any, path: str, accepts, opts: Any, shape: tuple, out_features: int):
    kwargs = dataclasses.asdict(opts)
    kwargs |= {"feature_shape": tuple(shape)} if "feature_shape" in accepts else {}
    kwargs |= {"out_features": out_features} if "out_features" in accepts else {}
    module = _call(obj, path, kwargs)
    if not isinstance(module, nn.Module):
        raise CmlearnError(f"{path} gave a {type(module).__name__}, not an nn.Module")
    return module


@SAMPLERS.register("regression")
def regression_source(family: Any, task: Any, device: torch.device) -> SinusoidSource:
    """A user's ``RegressionFamily``, sampled as the sinusoid is with the run's task sizes."""
    return SinusoidSource(
        task.shots,
        task.queries,
        task.eval_queries,
        family,
        device,
        family.input_shape,
        family.out_features,
        val_queries=task.val_queries,
    )


@SAMPLERS.register("source")
def user_source(data: Any, task: Any, device: torch.device) -> Any:
    """A task source the user built: used as it is (its own task sizes and device)."""
    return data.source


resolve_user_parts(user_entry)
