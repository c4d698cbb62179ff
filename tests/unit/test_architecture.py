"""The layout rules, checked on the source: no import cycle, and a pure core.

Imports are read with `ast` from every module of the project's packages, including imports inside
functions and under `TYPE_CHECKING`: a cycle hidden in a lazy import is still a cycle to a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("parcours", "ingest", "streams", "forecasting", "dashboard", "bench", "simulate")
# Modules that do I/O or hold a client: the pure core must import none of them.
IO_MODULES = (
    "faust",
    "kafka",
    "aiokafka",
    "sqlalchemy",
    "psycopg2",
    "streamlit",
    "fastapi",
    "httpx",
    "uvicorn",
    "requests",
    "socket",
    "asyncio",
    "parcours.db",
    "parcours.broker",
    "streams.runtime",
    "streams.sink",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        base = ROOT / package
        if base.is_dir():
            for path in base.rglob("*.py"):
                if "migrations" not in path.parts:
                    found[_module_name(path)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imports(path, name):
            # `from a.b import c` names the module a.b, or a.b.c when c is a module.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    graph = _graph()
    assert "streams.core.pathway" in graph
    assert _cycles(graph) == []


def test_streams_core_imports_no_io_module() -> None:
    modules = _modules()
    offending = {}
    for name, path in modules.items():
        if name == "streams.core" or name.startswith("streams.core."):
            bad = sorted(
                imported
                for imported in _imports(path, name)
                if any(imported == io or imported.startswith(io + ".") for io in IO_MODULES)
            )
            if bad:
                offending[name] = bad
    assert offending == {}
