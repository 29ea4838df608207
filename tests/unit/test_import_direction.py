"""The runtime package never reaches into the tooling (DESIGN.md section 1).

What ships to Lambda is ``sluice/`` plus the handlers and the task modules; the CLI, the
local stack, the demo and the chaos tooling live in ``sluice_tools/``, which may import
``sluice`` but not the other way round. A static read of every import statement, so a lazy
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sluice.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

RUNTIME_DIRS = ("sluice", "enqueuer", "consumer", "worker")
FORBIDDEN = ("sluice_tools", "typer", "rich", "tests", "bench")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def runtime_files() -> list[Path]:
    return sorted(p for d in RUNTIME_DIRS for p in (PROJECT_ROOT / d).rglob("*.py"))


def test_the_runtime_imports_no_tooling() -> None:
    # GIVEN every Python file that ships to Lambda
    files = runtime_files()
    assert len(files) > 10  # the walk found the package, not an empty tree
    # WHEN their imports are read
    offenders = {
        str(path.relative_to(PROJECT_ROOT)): sorted(m for m in imported_modules(path)
                                                    if m.split(".")[0] in FORBIDDEN)
        for path in files
    }
    # THEN none names the tooling package, the CLI libraries, the tests or the benchmarks
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    # GIVEN a module importing the tooling lazily, inside a function
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sluice_tools.cli import main\n    return main\n")
    # THEN the static read finds it
    assert "sluice_tools.cli" in imported_modules(module)
