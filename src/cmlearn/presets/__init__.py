"""Named experiment configurations: one module per paper experiment."""

from __future__ import annotations

from cmlearn import CmlearnError
from cmlearn.config import Config
from cmlearn.presets import graphs, omniglot, sinusoid

PRESETS: dict[str, tuple[str, dict]] = {**sinusoid.PRESETS, **omniglot.PRESETS, **graphs.PRESETS}
TABLES = {3: graphs.TABLE3}  # paper table -> preset -> published (base, +CML)


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise CmlearnError(f"unknown preset {name!r}; run 'cmlearn presets' to list them")
    return Config.from_dict({"preset": name, **PRESETS[name][1]})


def describe(table: int | None = None) -> list[tuple[str, str]]:
    """(name, description) of every preset, or of those that reproduce a column of ``table``."""
    if table is None:
        return [(name, text) for name, (text, _) in PRESETS.items()]
    if table not in TABLES:
        raise CmlearnError(
            f"no presets for Table {table}; tables with presets: {', '.join(map(str, TABLES))}"
        )
    return [(name, PRESETS[name][0]) for name in TABLES[table]]
