"""The suite's own rules (conftest.py): every test in one tier, and nothing is ever skipped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFTEST = Path(__file__).with_name("conftest.py")
INI = """[pytest]
markers =
    unit: unit
    services: services
"""


def _pytest(tmp_path: Path, **test_files: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``test_<name>.py`` files next to a copy of the suite's conftest.py."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text(INI)
    for name, source in test_files.items():
        (tmp_path / f"test_{name}.py").write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_is_a_failure(tmp_path):
    proc = _pytest(
        tmp_path,
        in_test="import pytest\n"
        "pytestmark = pytest.mark.unit\n"
        "def test_needs_a_server():\n"
        "    pytest.skip('no Weaviate here')\n"
        "def test_fine():\n"
        "    pass\n",
        in_module="import pytest\npytest.importorskip('no_such_module_here')\n",
    )
    assert proc.returncode == 1, proc.stdout
    summary = proc.stdout.splitlines()[-1]
    assert re.search(r"\b1 failed, 1 passed\b.*\b1 error\b", summary) and "skipped" not in summary, (
        proc.stdout
    )
    assert "never skips" in proc.stdout and "no Weaviate here" in proc.stdout
    assert "no_such_module_here" in proc.stdout


def test_a_test_without_a_tier_stops_collection(tmp_path):
    proc = _pytest(tmp_path, untiered="def test_untiered():\n    pass\n")
    assert proc.returncode != 0
    assert "test_untiered: marked with no tier; mark it unit or services" in proc.stderr


def test_a_unit_test_may_not_ask_for_a_service(tmp_path):
    proc = _pytest(
        tmp_path, sneaky="import pytest\n@pytest.mark.unit\ndef test_sneaky(weaviate_client):\n    pass\n"
    )
    assert proc.returncode != 0
    assert "test_sneaky: a unit test uses service fixtures ['weaviate_client'" in proc.stderr
