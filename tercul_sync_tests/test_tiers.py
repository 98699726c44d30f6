"""The suite's own rules (conftest.py): every test in one tier, and nothing is ever skipped."""

from __future__ import annotations

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


def _pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on one test file next to a copy of the suite's conftest.py."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_sample.py").write_text(test_source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_is_a_failure(tmp_path):
    proc = _pytest(
        tmp_path,
        "import pytest\n"
        "pytestmark = pytest.mark.unit\n"
        "def test_needs_a_server():\n"
        "    pytest.skip('no Weaviate here')\n"
        "def test_fine():\n"
        "    pass\n",
    )
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed" in proc.stdout
    assert "never skips" in proc.stdout and "no Weaviate here" in proc.stdout


def test_a_module_level_skip_is_a_failure_too(tmp_path):
    proc = _pytest(tmp_path, "import pytest\npytest.importorskip('no_such_module_here')\n")
    assert proc.returncode != 0, proc.stdout
    assert "skipped" not in proc.stdout.splitlines()[-1]


def test_a_test_without_a_tier_stops_collection(tmp_path):
    proc = _pytest(tmp_path, "def test_untiered():\n    pass\n")
    assert proc.returncode != 0
    assert "test_untiered: marked with no tier; mark it unit or services" in proc.stdout + proc.stderr


def test_a_unit_test_may_not_ask_for_a_service(tmp_path):
    proc = _pytest(
        tmp_path,
        "import pytest\n@pytest.mark.unit\ndef test_sneaky(weaviate_client):\n    pass\n",
    )
    assert proc.returncode != 0
    assert "a unit test uses service fixtures ['weaviate_client']" in proc.stdout + proc.stderr
