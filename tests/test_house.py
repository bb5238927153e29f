"""The package's layout as a checked property: the import graph of ``src/cmlearn`` (every
``import`` statement, function-level ones included) has no cycle, and the core
(``cmlearn.core``) imports nothing of the application (``cmlearn.app``) or the facade
(``cmlearn``), so it can be imported, read and reused alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cmlearn modules it imports (``from a.b import c`` names ``a.b.c`` when
    ``c`` is a module, else ``a.b``)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_reader_sees_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "cmlearn.core.tasks.batch" in graph["cmlearn.core.engine"]
    assert "cmlearn.app.config" in graph["cmlearn.app.build"]


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_core_imports_no_application() -> None:
    graph = import_graph()
    core = [m for m in graph if m.startswith("cmlearn.core")]
    assert len(core) > 15
    bad = {m: sorted(t for t in graph[m] if not t.startswith("cmlearn.core")) for m in core}
    assert {m: t for m, t in bad.items() if t} == {}


def test_importing_the_core_loads_no_application_scipy_or_plots() -> None:
    code = (
        "import sys\n"
        "import cmlearn.core.engine, cmlearn.core.models, cmlearn.core.tasks\n"
        "import cmlearn.core.algorithms, cmlearn.core.cml, cmlearn.core.registry\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('cmlearn.app', 'scipy',\n"
        "             'matplotlib', 'PIL')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
