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
    if not folder.is_dir():
        pytest.skip(f"{room}/ does not exist yet")
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
