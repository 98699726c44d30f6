"""The repository's Dagster instance on PostgreSQL keeps its connections open (``defs/storage.py``)."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.defs.storage import PooledPostgresStorage
from tercul_sync.devtools.dagster_deployment import PostgresStorage, write_instance_config
from tercul_sync_tests.conftest import drop_database, new_database

pytestmark = pytest.mark.services


@dg.asset
def counted() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"n": 1})


def _backends(admin_url: str, db: str) -> int:
    """Connections open to ``db`` now (other than the one asking)."""
    admin = sa.create_engine(admin_url)
    with admin.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
            {"db": db},
        ).scalar_one()
    admin.dispose()
    return int(n)


def _terminate_backends(admin_url: str, db: str) -> int:
    admin = sa.create_engine(admin_url)
    with admin.connect() as conn:
        ended = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": db},
        ).scalar_one()
    admin.dispose()
    return int(ended)


def test_the_repositorys_instance_keeps_a_connection_per_storage_instead_of_one_per_event(
    postgres, tmp_path, monkeypatch
):
    db = new_database(postgres, "dagster_pool")
    try:
        for key, value in PostgresStorage(db).env().items():
            monkeypatch.setenv(key, value)
        home = tmp_path / "home"
        write_instance_config(home)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            storage = instance.get_ref().storage_data
            assert storage is not None
            assert (storage.module_name, storage.class_name) == (
                PooledPostgresStorage.__module__,
                PooledPostgresStorage.__name__,
            )
            for _ in range(3):  # each run stores a dozen events and reads the run back
                assert dg.materialize([counted], instance=instance).success
            # Kept open for the next event, as the webserver's pool keeps them: with dagster-postgres's
            # own storage (a new connection per call, closed after it) there would be none now.
            held = _backends(postgres, db)
            assert 1 <= held <= 2, held  # at most one per pooled storage: runs, events
            assert len(instance.get_runs()) == 3
            # PostgreSQL drops the kept connections (a restart, an idle timeout): the next run's
            # writes ping, find them gone and open new ones instead of failing.
            assert _terminate_backends(postgres, db) >= 1
            assert dg.materialize([counted], instance=instance).success
            assert len(instance.get_runs()) == 4
        assert _backends(postgres, db) == 0  # and closed with the instance
    finally:
        drop_database(postgres, db)
