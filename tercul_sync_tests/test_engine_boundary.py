"""The layers: ``tercul_sync/engine`` runs without Dagster, and knows nothing of ``defs`` or ``devtools``."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "tercul_sync" / "engine"
OUTER = ("tercul_sync.defs", "tercul_sync.devtools", "tercul_sync.definitions")


def _engine_modules() -> list[str]:
    return sorted(f"tercul_sync.engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__")


def _forbidden(name: str) -> bool:
    """Dagster (``dagster``, ``dagster_*``) or a layer above the engine."""
    top = name.split(".")[0]
    return (
        top == "dagster"
        or top.startswith("dagster_")
        or any(name == p or name.startswith(f"{p}.") for p in OUTER)
    )


def test_the_engine_modules_are_found():
    modules = _engine_modules()
    # a few the project relies on: had the glob found nothing, the checks below would be vacuous
    assert {"tercul_sync.engine.settings", "tercul_sync.engine.runs", "tercul_sync.engine.writing"} <= set(
        modules
    )


def test_importing_every_engine_module_loads_no_dagster():
    """A fresh interpreter imports the whole engine; no Dagster module may come along, directly or not."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {_engine_modules()!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tercul_sync.engine.runs" in loaded
    assert [m for m in loaded if _forbidden(m)] == []


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an engine file imports, at any depth of its code (functions, TYPE_CHECKING blocks)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_no_engine_file_imports_dagster_or_the_outer_layers():
    bad = []
    for path in sorted(ENGINE.glob("*.py")):
        for line, module in _imports(path):
            if _forbidden(module) or module.startswith(".."):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert bad == []


def test_the_scan_would_catch_a_dagster_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "def f():\n"
        "    import dagster as dg\n"
        "    from dagster_graphql import DagsterGraphQLClient\n"
        "    from tercul_sync.defs import assets\n"
    )
    modules = [m for _, m in _imports(sample)]
    assert [m for m in modules if _forbidden(m)] == ["dagster", "dagster_graphql", "tercul_sync.defs"]
    assert not _forbidden("dagsterish") and not _forbidden("tercul_sync.engine.settings")
