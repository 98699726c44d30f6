"""The repository's Dagster instance on PostgreSQL keeps its connections open (``defs/storage.py``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.defs.storage import SCHEMA_LOCK_KEY, PooledPostgresStorage
from tercul_sync.devtools.dagster_deployment import PostgresStorage, write_instance_config
from tercul_sync_tests.conftest import drop_database, new_database

pytestmark = pytest.mark.services


@dg.asset
def counted() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"n": 1})


def _connections(admin_url: str, db: str, columns: str) -> list[tuple[object, ...]]:
    """``columns`` of ``pg_stat_activity`` for each connection to ``db`` (other than the one asking)."""
    admin = sa.create_engine(admin_url)
    with admin.connect() as conn:
        query = f"SELECT {columns} FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
        rows = conn.execute(sa.text(query), {"db": db}).all()
    admin.dispose()
    return [tuple(row) for row in rows]


def _backends(admin_url: str, db: str) -> int:
    """Connections open to ``db`` now."""
    return len(_connections(admin_url, db, "pid"))


def _activity(admin_url: str, db: str) -> list[tuple[object, ...]]:
    """What each connection to ``db`` is doing (for a failure's message)."""
    return _connections(
        admin_url, db, "pid, application_name, state, backend_start, state_change, left(query, 120)"
    )


def _backends_settled(admin_url: str, db: str, at_most: int, within_s: float) -> int:
    """Connections open to ``db`` once at most ``at_most`` remain, or after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (n := _backends(admin_url, db)) > at_most and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def _terminate_backends(admin_url: str, db: str) -> int:
    """End every connection to ``db``: how many were ended."""
    return sum(bool(ended) for (ended,) in _connections(admin_url, db, "pg_terminate_backend(pid)"))


@contextlib.contextmanager
def repository_instance(postgres: str, tmp_path, monkeypatch, prefix: str) -> Iterator[tuple[str, str]]:
    """The repository's ``dagster.yaml`` on a new database (dropped afterwards): its home and database."""
    db = new_database(postgres, prefix)
    try:
        for key, value in PostgresStorage(db).env().items():
            monkeypatch.setenv(key, value)
        home = tmp_path / "home"
        write_instance_config(home)
        yield str(home), db
    finally:
        drop_database(postgres, db)


def test_the_repositorys_instance_keeps_a_connection_per_storage_instead_of_one_per_event(
    postgres, tmp_path, monkeypatch
):
    with repository_instance(postgres, tmp_path, monkeypatch, "dagster_pool") as (home, db):
        with dg.DagsterInstance.from_config(home) as instance:
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
            # At most one per pooled storage (runs, events). One opened beyond it while a thread
            # needed it (the schedule storage's, the pool's overflow) leaves pg_stat_activity a
            # moment after its client closes it: CI once counted 3 just then. One left open stays.
            held = _backends_settled(postgres, db, at_most=2, within_s=10)
            assert 1 <= held <= 2, _activity(postgres, db)
            assert len(instance.get_runs()) == 3
            # PostgreSQL drops the kept connections (a restart, an idle timeout): the next run's
            # writes ping, find them gone and open new ones instead of failing.
            assert _terminate_backends(postgres, db) >= 1
            assert dg.materialize([counted], instance=instance).success
            assert len(instance.get_runs()) == 4
        # And closed with the instance. A backend leaves pg_stat_activity a moment after its client
        # hangs up (on a slow day that moment was seen): a connection left open stays and fails this.
        assert _backends_settled(postgres, db, at_most=0, within_s=10) == 0


shards = dg.StaticPartitionsDefinition(["a", "b", "c", "d"])


@dg.asset(partitions_def=shards, check_specs=[dg.AssetCheckSpec("positive", asset="sharded")])
def sharded():  # tagged materializations and a check, as the entity assets
    yield dg.MaterializeResult(metadata={"n": 1})
    yield dg.AssetCheckResult(check_name="positive", passed=True)


def test_storing_materializations_and_checks_opens_no_new_connection(postgres, tmp_path, monkeypatch):
    """Dagster asks whether a table exists for every materialization and check evaluation, from
    inside the connection storing it: without the storage's memory of tables found, each event
    opened (and closed) one more connection."""
    with (
        repository_instance(postgres, tmp_path, monkeypatch, "dagster_tables") as (home, _),
        dg.DagsterInstance.from_config(home) as instance,
    ):
        opened: list[object] = []
        engine = instance.event_log_storage._engine  # type: ignore[attr-defined]
        sa.event.listen(engine, "connect", lambda conn, record: opened.append(conn))
        first, *others = shards.get_partition_keys()
        assert dg.materialize([sharded], instance=instance, partition_key=first).success
        assert opened, "the kept connection is opened by the first run's events"
        opened.clear()
        for partition in others:
            assert dg.materialize([sharded], instance=instance, partition_key=partition).success
        events = instance.fetch_materializations(dg.AssetKey("sharded"), limit=10).records
        assert len(events) == 4
        assert not opened, f"{len(opened)} connections opened for three runs' events"


def test_runs_and_asset_records_are_read_without_reflecting_their_tables_each_time(
    postgres, tmp_path, monkeypatch
):
    """Dagster reflects every column of ``runs`` when it adds a run or reads a run record, and of
    ``asset_keys`` when it reads an asset record, several times per step and each with a
    connection of its own; the storages remember the columns they found."""
    with (
        repository_instance(postgres, tmp_path, monkeypatch, "dagster_columns") as (home, _),
        dg.DagsterInstance.from_config(home) as instance,
    ):
        reflected: list[str] = []

        def count(conn, cursor, statement, parameters, context, executemany):
            if "pg_catalog.pg_attribute" in statement:
                reflected.append(str(parameters))

        for storage in (instance.event_log_storage, instance.run_storage):
            sa.event.listen(storage._engine, "before_cursor_execute", count)  # type: ignore[attr-defined]
        first, *others = shards.get_partition_keys()
        assert dg.materialize([sharded], instance=instance, partition_key=first).success
        assert instance.get_asset_records([dg.AssetKey("sharded")])
        assert reflected, "the first run and read find the columns"
        reflected.clear()
        for partition in others:
            assert dg.materialize([sharded], instance=instance, partition_key=partition).success
        assert instance.get_asset_records([dg.AssetKey("sharded")])
        assert not reflected, f"{len(reflected)} tables reflected for three more runs: {reflected[:3]}"


def test_processes_starting_together_on_an_empty_database_all_get_the_instance(postgres, tmp_path):
    """Celery workers, a run worker and the daemon can all start at once on a new Dagster database;
    each creates the tables it finds missing. dagster-postgres retries a lost race on some of those
    tables but not on ``instance_info`` (CI once lost a Celery worker to "relation instance_info
    already exists"): the storage creates them one process at a time."""
    db = new_database(postgres, "dagster_race")
    try:
        home = tmp_path / "home"
        write_instance_config(home)
        start_at = time.time() + 12  # every process has imported dagster by then: they race
        script = (
            "import time, dagster as dg\n"
            f"time.sleep(max(0, {start_at} - time.time()))\n"
            f"instance = dg.DagsterInstance.from_config({str(home)!r})\n"
            "instance.get_runs(limit=1)\n"  # the storage is made on first use
            "instance.dispose()\n"
        )
        env = {**os.environ, **PostgresStorage(db).env()}
        procs = [
            subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(10)
        ]
        failures = [err for p in procs if (err := p.communicate(timeout=300)[1]) and p.returncode != 0]
        assert not failures, failures[0][-2000:]  # without the lock: one run in four or so lost here
    finally:
        drop_database(postgres, db)


def test_a_process_making_dagsters_tables_waits_for_another_one_making_them(postgres, tmp_path):
    """The race above, made certain: while the lock is held (another process making the tables),
    a new process waits for it instead of creating tables beside it, then gets its instance."""
    db = new_database(postgres, "dagster_lock")
    # Advisory locks are per database. Autocommit: pg_stat_activity is read afresh each time (inside one
    # transaction it would show the first snapshot again).
    holder = sa.create_engine(sa.make_url(postgres).set(database=db), isolation_level="AUTOCOMMIT")
    try:
        home = tmp_path / "home"
        write_instance_config(home)
        script = f"import dagster as dg\ndg.DagsterInstance.from_config({str(home)!r}).get_runs(limit=1)\n"
        env = {**os.environ, **PostgresStorage(db).env()}
        with holder.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            proc = subprocess.Popen(
                [sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True
            )
            deadline = time.monotonic() + 120
            while not _waiting_on_the_lock(conn, db):
                assert proc.poll() is None, proc.communicate()[1][-2000:]  # made its tables, did not wait
                assert time.monotonic() < deadline, "the process never asked for the lock"
                time.sleep(0.2)
            tables = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert tables == 0  # the lock is taken before any table is made
    finally:
        holder.dispose()
        drop_database(postgres, db)


def _waiting_on_the_lock(conn: sa.Connection, db: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ),
            {"db": db},
        ).scalar_one()
    )


def test_a_process_that_found_the_tables_and_its_forks_do_not_look_again(postgres, tmp_path):
    """Once a process has found (or made) the tables, another instance it makes, and the step
    processes it forks, skip the lock and the look: they get their instance while the lock is held."""
    db = new_database(postgres, "dagster_found")
    holder = sa.create_engine(sa.make_url(postgres).set(database=db), isolation_level="AUTOCOMMIT")
    try:
        home = tmp_path / "home"
        write_instance_config(home)
        script = (
            "import os, sys, dagster as dg\n"
            f"def instance(): dg.DagsterInstance.from_config({str(home)!r}).get_runs(limit=1)\n"
            "instance()\n"  # looks: makes the tables
            "print('found', flush=True)\n"
            "sys.stdin.readline()\n"  # the test holds the lock now
            "instance()\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    instance()\n"
            "    os._exit(0)\n"
            "_, status = os.waitpid(child, 0)\n"
            "print('done', status, flush=True)\n"
        )
        env = {**os.environ, **PostgresStorage(db).env()}
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "found", proc.communicate()[1][-2000:]
        with holder.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            proc.stdin.write("go\n")
            proc.stdin.flush()
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                waiting = _waiting_on_the_lock(conn, db)
                proc.kill()
                pytest.fail(f"an instance waited for the lock again (waiting on it: {waiting})")
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
        assert proc.returncode == 0 and out.strip() == "done 0", (out, err[-2000:])
    finally:
        holder.dispose()
        drop_database(postgres, db)
