"""Import directions between rooms (docs/ARCHITECTURE.md): the UI and the REST API never touch torch or
diffusers directly, and the engine never imports a web framework. A violation here means device or cache
logic is leaking out of the pipeline manager."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "ui": {"torch", "diffusers", "transformers", "accelerate"},
    "api": {"torch", "diffusers", "transformers", "accelerate"},
    "pipelines": {"gradio", "fastapi", "starlette", "uvicorn"},
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_does_not_import_forbidden_libraries(room: str) -> None:
    folder = ROOT / room
    assert folder.is_dir(), f"{room}/ is missing"
    offenders = {}
    for path in sorted(folder.rglob("*.py")):
        bad = _imported_roots(path) & FORBIDDEN[room]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{room}/ must not import {sorted(FORBIDDEN[room])}: {offenders}"


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom torch import nn\nimport diffusers.models\n", encoding="utf-8")
    assert {"torch", "diffusers"} <= _imported_roots(sample)


# --- no import cycle inside the engine ---------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _engine_imports(path: Path, known: set[str]) -> set[str]:
    """The pipelines/ modules ``path`` imports anywhere in it (function-level imports count: they cycle too).

    ``from . import devices`` is an import of ``pipelines.devices``; the packages above a module are imported by
    Python before it in any case, so an edge to one of them is left out."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {module})
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {module for module in found if module in known and module != name and module not in ancestors}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by a depth-first search (each closed path once)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_engine_has_no_import_cycle() -> None:
    files = sorted((ROOT / "pipelines").rglob("*.py"))
    known = {_module_name(path) for path in files}
    graph = {_module_name(path): _engine_imports(path, known) for path in files}
    assert {"pipelines.registry", "pipelines.loaders"} <= graph["pipelines.manager"] | graph["pipelines.loaders"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles in pipelines/: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_follows_relative_and_function_level_imports(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (package / name).write_text("", encoding="utf-8")
    (package / "sub" / "c.py").write_text("from .. import a\ndef f():\n    from ..b import x\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    assert _engine_imports(package / "sub" / "c.py", known) == {"pkg.a", "pkg.b"}
