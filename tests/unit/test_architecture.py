"""The layering rules that import-linter cannot see: no project module imported inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("cli", "benchmarks", "flows", "tasks", "models", "recsys")
ROOT = Path(__file__).resolve().parents[2]


def local_project_imports(source: str) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    names = [inner.module or ""]
                elif isinstance(inner, ast.Import):
                    names = [alias.name for alias in inner.names]
                else:
                    continue
                if any(name.split(".")[0] in PACKAGES for name in names):
                    lines.append(inner.lineno)
    return lines


def test_the_check_finds_a_local_import():
    assert local_project_imports("def f():\n    from tasks import train\n") == [2]
    assert local_project_imports("import tasks\ndef f():\n    import numpy\n") == []


def test_no_function_local_imports_of_project_modules():
    found = {str(path.relative_to(ROOT)): lines for package in PACKAGES for path in (ROOT / package).rglob("*.py")
             if (lines := local_project_imports(path.read_text()))}
    assert found == {}, "a function-local import of a project module hides a cycle: move the shared piece down"
