"""Tiers, and the fixtures that start the real services: PostgreSQL 15 and a Weaviate server.

Every test is in exactly one tier, by marker: ``unit`` (pure logic, SQLite
at most, no server; ``pytest -m unit`` runs in seconds) or ``services``
(the real PostgreSQL and Weaviate). Collection stops on a test with no tier,
or a ``unit`` test that asks for a service fixture.

Nothing is ever skipped: a test that needs a service and cannot get it
fails, in CI and on a laptop alike, with the error that stopped it, and a
skip from anywhere (an ``importorskip``, a plugin) is turned into a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import weaviate

from tercul_sync.devtools import weaviate_server
from tercul_sync.engine import weaviate_client as wc

ROOT = Path(__file__).resolve().parents[1]  # the repository
TIERS = ("unit", "services")
SERVICE_FIXTURES = {"postgres", "pg_database", "weaviate_server_proc", "weaviate_client", "dagster_pg"}

PG_USER = os.environ.get("TERCUL_PG_USER", "tercul")
PG_PASSWORD = os.environ.get("TERCUL_PG_PASSWORD", "tercul")
PG_HOST_PORT = f"127.0.0.1:{os.environ.get('TERCUL_PG_PORT', '5432')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: marked {tiers or 'with no tier'}; mark it unit or services")
        elif tiers == ["unit"] and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            used = sorted(SERVICE_FIXTURES & set(item.fixturenames))
            problems.append(f"{item.nodeid}: a unit test uses service fixtures {used}; mark it services")
    if problems:
        raise pytest.UsageError("tiers:\n  " + "\n  ".join(problems))


def _never_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}), and this suite never skips: a missing service is a failure"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    _never_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    report = yield
    _never_skip(report)
    return report


def pg_url(db: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{PG_HOST_PORT}/{db}"


@pytest.fixture(scope="session")
def postgres() -> str:
    """Start the machine's PostgreSQL (scripts/postgres-up) and return the admin database's URL."""
    subprocess.run([str(ROOT / "scripts" / "postgres-up")], check=True)
    url = pg_url("tercul_test")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()
    return url


def new_database(postgres: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name


def drop_database(postgres: str, name: str) -> None:
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_database(postgres: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = new_database(postgres, "tercul_t")
    try:
        yield pg_url(name)
    finally:
        drop_database(postgres, name)


def start_weaviate(data_dir: Path, **kwargs: Any) -> weaviate_server.LocalWeaviate:
    """A real Weaviate server on loopback, from the repository's binary (``.tercul/bin``), built if needed."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("TERCUL_SYNC_HOME"):  # whatever the working directory, the repo's binary
            mp.setenv("TERCUL_SYNC_HOME", str(ROOT / ".tercul"))
        return weaviate_server.start(data_dir, **kwargs)


@pytest.fixture(scope="session")
def weaviate_server_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[weaviate_server.LocalWeaviate]:
    """One Weaviate server for the session; ``weaviate_client`` empties it before each test."""
    server = start_weaviate(tmp_path_factory.mktemp("weaviate"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def weaviate_client(weaviate_server_proc: weaviate_server.LocalWeaviate) -> Iterator[weaviate.WeaviateClient]:
    """A client on an empty Weaviate: every collection is dropped before the test."""
    client = wc.connect(weaviate_server_proc.url, weaviate_server_proc.grpc_port, None, timeout_s=60)
    for alias in client.alias.list_all():
        client.alias.delete(alias_name=alias)
    client.collections.delete_all()
    try:
        yield client
    finally:
        client.close()
