"""Named experiment configurations: one module per paper experiment."""

from __future__ import annotations

import math
import re

from cmlearn.app.presets import graphs, images, omniglot, sinusoid
from cmlearn.core.errors import CmlearnError

PRESETS: dict[str, tuple[str, dict]] = {
    **sinusoid.PRESETS,
    **omniglot.PRESETS,
    **graphs.PRESETS,
    **images.PRESETS,
}
# paper table -> preset -> {row label: published accuracy %} (NaN: the paper's "failed")
TABLES: dict[int, dict[str, dict[str, float]]] = {
    **images.TABLES,
    3: {
        name: {method: base, f"{method} + CML": cml}
        for name, (base, cml) in graphs.TABLE3.items()
        for method in ["G-Meta" if name.endswith("gmeta") else "AMM-GNN"]
    },
}
TABLES = dict(sorted(TABLES.items()))


def published(name: str) -> str:
    """The paper's numbers for preset ``name`` in every table that lists it ("" if none)."""
    cells = [
        f"Table {t}: "
        + ", ".join(
            f"{label} {'failed' if math.isnan(v) else f'{v:.2f}'}"
            for label, v in rows[name].items()
        )
        for t, rows in TABLES.items()
        if name in rows
    ]
    return "; ".join(cells)


DOMAINS = {  # the paper's three domains, in its order, by the module that defines them
    "sinusoid regression": sinusoid.PRESETS,
    "few-shot image classification": {**omniglot.PRESETS, **images.PRESETS},
    "few-shot node classification": graphs.PRESETS,
}
_OWN_NUMBERS = re.compile(r"\s*\((?:CML )?Table \d+: [^)]*\)")


def grouped() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every preset under a header per domain and dataset, in the paper's table order
    (presets of no table last, then by name), each description with its tables."""
    groups: dict[str, list[tuple[tuple, str, str]]] = {}
    for domain, members in DOMAINS.items():
        for name, (text, settings) in members.items():
            dataset = settings.get("data", {}).get("name", "sinusoid")  # Config's default
            tables = [t for t, rows in TABLES.items() if name in rows]
            natural = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
            key = (min(tables, default=math.inf), natural)
            shown = text + (f"  [Table {', '.join(map(str, tables))}]" if tables else "")
            groups.setdefault(f"{domain}: {dataset}", []).append((key, name, shown))
    return [
        (f"{header} ({len(rows)})", [(name, text) for _, name, text in sorted(rows)])
        for header, rows in groups.items()
    ]


def describe(table: int | None = None) -> list[tuple[str, str]]:
    """(name, description) of every preset, or (name, the paper's numbers · description) of
    those that reproduce a row or column of ``table``."""
    if table is None:
        return [(name, text) for name, (text, _) in PRESETS.items()]
    if table not in TABLES:
        raise CmlearnError(
            f"no presets for Table {table}; tables with presets: {', '.join(map(str, TABLES))}"
        )
    rows = []
    for name, row in TABLES[table].items():
        numbers = ", ".join(
            f"{k} {'failed' if math.isnan(v) else f'{v:.2f}'}" for k, v in row.items()
        )
        text = _OWN_NUMBERS.sub("", PRESETS[name][0])  # the numbers are shown once, here
        rows.append((name, f"{numbers}  ·  {text}"))
    return rows
