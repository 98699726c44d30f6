"""Fixtures that start the real services: PostgreSQL 15 and a Weaviate server.

There is no skip here: a test that needs a service and cannot get it fails,
in CI and on a laptop alike, with the error that stopped it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import weaviate
from tercul_sync.settings import PROJECT_DIR

from tercul_sync import weaviate_io, weaviate_server

PG_USER = os.environ.get("TERCUL_PG_USER", "tercul")
PG_PASSWORD = os.environ.get("TERCUL_PG_PASSWORD", "tercul")
PG_HOST_PORT = f"127.0.0.1:{os.environ.get('TERCUL_PG_PORT', '5432')}"


def pg_url(db: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{PG_HOST_PORT}/{db}"


@pytest.fixture(scope="session")
def postgres() -> str:
    """Start the machine's PostgreSQL (scripts/postgres-up) and return the admin database's URL."""
    subprocess.run([str(PROJECT_DIR / "scripts" / "postgres-up")], check=True)
    url = pg_url("tercul_test")
    with sa.create_engine(url).connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return url


@pytest.fixture
def pg_database(postgres: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"tercul_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def weaviate_server_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[weaviate_server.LocalWeaviate]:
    """A real Weaviate server on loopback, built from its Go module if needed."""
    data: Path = tmp_path_factory.mktemp("weaviate")
    server = weaviate_server.start(data)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def weaviate_client(weaviate_server_proc: weaviate_server.LocalWeaviate) -> Iterator[weaviate.WeaviateClient]:
    """A client on an empty Weaviate: every collection is dropped before the test."""
    client = weaviate_io.connect(weaviate_server_proc.url, weaviate_server_proc.grpc_port)
    client.collections.delete_all()
    try:
        yield client
    finally:
        client.close()
