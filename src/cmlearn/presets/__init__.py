"""Named experiment configurations: one module per paper experiment."""

from __future__ import annotations

from cmlearn import CmlearnError
from cmlearn.config import Config
from cmlearn.presets import omniglot, sinusoid

PRESETS: dict[str, tuple[str, dict]] = {**sinusoid.PRESETS, **omniglot.PRESETS}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise CmlearnError(f"unknown preset {name!r}; run 'cmlearn presets' to list them")
    return Config.from_dict({"preset": name, **PRESETS[name][1]})


def describe() -> list[tuple[str, str]]:
    return [(name, text) for name, (text, _) in PRESETS.items()]
