"""The layout's rules, checked on the source: imports point down the lifecycle.

    top level (settings, exceptions, modeldef, schemas, db, migrations, audit, files,
               coordination, progress)
      <- datasets <- training <- inference <- monitoring <- ops <- cli

A stage may import the stages before it and the top-level modules, never one
after it; the core never imports prefect or fastapi (``aipaas.cli`` aside,
which drives flows and serving). A violation names the file, the line and the
import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "aipaas"
ORDER = ["datasets", "training", "inference", "monitoring", "ops", "cli"]
TOP = {
    "settings",
    "exceptions",
    "modeldef",
    "schemas",
    "db",
    "migrations",
    "audit",
    "files",
    "coordination",
    "progress",
    "__init__",
}
EDGES = ("prefect", "fastapi", "starlette", "flows", "serving")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "aipaas":  # from aipaas import settings, ...
                found += [(node.lineno, f"aipaas.{alias.name}") for alias in node.names]
    return found


def _layer(module: str) -> int | None:
    """Rank of an ``aipaas...`` module in the lifecycle; top-level modules rank -1."""
    parts = module.split(".")
    if parts[0] != "aipaas" or len(parts) < 2:
        return None
    if parts[1] in ORDER:
        return ORDER.index(parts[1])
    if parts[1] in TOP or parts[1] == "__version__":
        return -1
    raise AssertionError(f"{module} is neither a stage package nor a top-level module")


def _violations() -> list[str]:
    bad: list[str] = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent)
        own = _layer(".".join(rel.with_suffix("").parts))
        assert own is not None
        for line, module in _imports(path):
            if own < ORDER.index("cli") and module.split(".")[0] in EDGES:
                bad.append(f"{rel}:{line} imports {module} (the core never imports an edge)")
            target = _layer(module)
            if target is not None and target > own:
                bad.append(f"{rel}:{line} imports {module}, a later stage")
    return bad


def test_imports_point_down_the_lifecycle() -> None:
    assert _violations() == []


def test_stage_packages_do_not_clash_with_project_folders() -> None:
    project = CORE.parent
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}
    assert set(ORDER) <= packages
    assert not packages & {p.name for p in project.iterdir() if p.is_dir()}


@pytest.mark.parametrize(
    ("module", "rank"),
    [("aipaas.settings", -1), ("aipaas.training.train", 1), ("aipaas.ops.up", 4), ("os", None)],
)
def test_layer_ranks(module: str, rank: int | None) -> None:
    assert _layer(module) == rank
