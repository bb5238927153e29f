"""Where a run reads data, caches it and computes: settings of the machine, not of the run.

They are not part of a run's configuration, so a run trained on one machine (or a GPU) is
evaluated on another (or a CPU) unchanged.

- data root: ``--data-root``, else ``$CMLEARN_DATA``, else ``~/.local/share/cmlearn/data``
  (``$XDG_DATA_HOME/cmlearn/data`` when set). Omniglot is read from ``<root>/omniglot/``.
- cache: ``$CMLEARN_CACHE``, else ``~/.cache/cmlearn`` (``$XDG_CACHE_HOME/cmlearn``).
- device: ``--device cpu|cuda|auto``; ``auto`` is CUDA when available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmlearn.core.errors import CmlearnError

DEVICES = ("auto", "cpu", "cuda")


def default_data_root() -> Path:
    if os.environ.get("CMLEARN_DATA"):
        return Path(os.environ["CMLEARN_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cmlearn" / "data"


def default_cache() -> Path:
    if os.environ.get("CMLEARN_CACHE"):
        return Path(os.environ["CMLEARN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cmlearn"


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise CmlearnError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CmlearnError(f"--device {name}: this PyTorch build sees no CUDA device")
    return torch.device(name)


@dataclass(frozen=True)
class Runtime:
    data_root: Path = field(default_factory=default_data_root)
    cache: Path = field(default_factory=default_cache)
    device: torch.device = field(default_factory=lambda: resolve_device("auto"))

    @classmethod
    def resolve(
        cls, data_root: Path | None = None, device: str = "auto", cache: Path | None = None
    ) -> Runtime:
        return cls(
            Path(data_root).expanduser() if data_root else default_data_root(),
            Path(cache).expanduser() if cache else default_cache(),
            resolve_device(device),
        )
