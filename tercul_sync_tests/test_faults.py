"""Faults, each against real services, each ending with the parity check exact (docs/reliability.md).

- a read-only Weaviate (the disk-full case): the step fails naming the cause; once READY, the next
  run converges;
- Weaviate SIGKILLed in the middle of a full sync, restarted on the same data folder;
- PostgreSQL backends of the sync terminated in the middle of an incremental run;
- the PostgreSQL postmaster SIGKILLed in the middle of a full sync, on a private cluster, restarted on
  its data folder (crash recovery);
- Weaviate frozen (SIGSTOP) for longer than the client's timeout;
- the step process SIGKILLed on the real daemon, then eight concurrent runs of mixed jobs.

The kills and the freeze use a Weaviate of their own (``start_weaviate`` on a tmp folder), never the
session's; the postmaster kill, a PostgreSQL cluster of its own (``devtools.postgres_server``), never
the shared one. Each prints ``FAULT <name>: ...`` with what it measured (``pytest -s`` shows them).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import weaviate
from dagster_graphql import DagsterGraphQLClient
from weaviate.classes.query import Filter

from tercul_sync.defs.assets import build_assets
from tercul_sync.defs.checks import PARITY_STEP
from tercul_sync.defs.partitions import all_shards_tags
from tercul_sync.defs.resources import WeaviateResource
from tercul_sync.devtools import dagster_deployment, demo_data, postgres_server
from tercul_sync.devtools.dagster_deployment import PostgresStorage
from tercul_sync.devtools.postgres_server import PrivatePostgres
from tercul_sync.devtools.weaviate_server import LocalWeaviate
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.objects import ObjectWrite
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.registry import ENTITIES
from tercul_sync.engine.settings import Settings, load_settings
from tercul_sync_tests.conftest import PG_PASSWORD, PG_USER, start_weaviate
from tercul_sync_tests.helpers import (
    SHARDS,
    PausingWeaviate,
    metadata,
    resources,
    run_sync,
    weaviate_resource,
)
from tercul_sync_tests.test_dagster_services import (  # noqa: F401 (dagster_pg is a fixture)
    _finished,
    _wait,
    dagster_pg,
)

pytestmark = pytest.mark.services

READ_ONLY = "Weaviate refused writes: shard is read-only (disk full or set by an operator)"


def fault(name: str, **figures: Any) -> None:
    """One line of measured figures, for docs/reliability.md."""
    print(f"FAULT {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def connect(server: LocalWeaviate) -> weaviate.WeaviateClient:
    return wc.connect(server.url, server.grpc_port, None, timeout_s=60)


def assert_parity_exact(
    engine: sa.Engine, client: weaviate.WeaviateClient, settings: Settings | None = None
) -> None:
    """Every collection holds exactly the live rows: nothing missing, orphan, stale, no wrong reference.
    ``settings``: those the objects were written with (by default this process's, as in-process runs use)."""
    shards = [reading.Shard(0, 1)]
    settings = settings or load_settings()
    reports = [check_parity(engine, client, e, shards, settings) for e in ENTITIES]
    off = [r.describe() for r in reports if not r.exact]
    assert not off, off
    assert sum(r.rows for r in reports) > 0


def assert_converged(engine: sa.Engine, server: LocalWeaviate) -> None:
    """``assert_parity_exact`` through a client of its own on ``server``."""
    client = connect(server)
    try:
        assert_parity_exact(engine, client)
    finally:
        client.close()


def parity_counts(engine: sa.Engine, client: weaviate.WeaviateClient, collection: str) -> dict[str, int]:
    [e] = [e for e in ENTITIES if e.collection == collection]
    return check_parity(engine, client, e, [reading.Shard(0, 1)], load_settings()).counts


def failure_descriptions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """``{step: description or error}`` of every failed step of an in-process run. An error is told
    with its causes, as the UI shows it: a step out of retries says "Exceeded max_retries of 0"
    and names what failed in its cause."""
    out = {}
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        text = data.user_failure_data.description if data.user_failure_data else None
        error, told = data.error, []
        while error is not None:
            told.append(error.message)
            error = error.cause
        out[event.step_key] = text or "\n".join(told)
    return out


def materialization_count(instance: dg.DagsterInstance, asset: str) -> int:
    return len(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


@pytest.fixture
def own_weaviate(tmp_path: Path) -> Iterator[LocalWeaviate]:
    """A Weaviate for one test, on a tmp folder: it may be frozen, made read-only or killed."""
    holder = {"server": start_weaviate(tmp_path / "weaviate")}
    try:
        yield holder["server"]
    finally:
        server = holder["server"]
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster for one test, on a folder of its own: its postmaster may be SIGKILLed."""
    server = postgres_server.start(tmp_path / "postgres")
    try:
        yield server
    finally:
        server.remove()


def _set_shards(client: weaviate.WeaviateClient, status: str) -> None:
    for name in client.collections.list_all(simple=True):
        client.collections.use(name).config.update_shards(status=status)


# --- 1. the disk-full case: shards READONLY --------------------------------------------------------


def test_read_only_shards_fail_the_step_with_the_cause_and_the_next_run_converges(pg_database, own_weaviate):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 600, seed=21)
    instance = dg.DagsterInstance.ephemeral()
    assert run_sync(pg_database, own_weaviate, instance=instance).success
    client = connect(own_weaviate)
    try:
        assert_parity_exact(engine, client)
        with engine.begin() as conn:
            works = list(
                conn.execute(
                    sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id LIMIT 3")
                ).scalars()
            )
            publisher = conn.execute(  # Publisher waits for no other asset: its step runs
                sa.text("SELECT id FROM publishers WHERE deleted_at IS NULL ORDER BY id LIMIT 1")
            ).scalar_one()
            conn.execute(
                sa.text(
                    "UPDATE works SET title = 'after the disk filled ' || id, updated_at = now() + "
                    "interval '1 second' WHERE id = ANY(:ids)"
                ),
                {"ids": works},
            )
            conn.execute(
                sa.text("UPDATE publishers SET deleted_at = now(), updated_at = now() WHERE id = :i"),
                {"i": publisher},
            )
        before = {a: materialization_count(instance, a) for a in ("Work", "Publisher")}
        _set_shards(client, "READONLY")  # what Weaviate does by itself above DISK_USE_READONLY_PERCENTAGE

        refused = run_sync(
            pg_database,
            own_weaviate,
            instance=instance,
            mode="incremental",
            raise_on_error=False,
            overlap_seconds=0,
        )
        assert not refused.success  # three changed rows and a delete: no threshold lets them pass as green
        failures = failure_descriptions(refused)
        assert set(failures) >= {"Work", "Publisher"}, failures  # a batch refused, a delete refused
        for step in ("Work", "Publisher"):
            assert failures[step].startswith(f"{step}: {READ_ONLY}"), failures[step]
            assert 'update_shards(status="READY")' in failures[step]
        # Failed once, not retried: it lasts until an operator acts.
        assert [e.step_key for e in refused.get_step_failure_events()].count("Work") == 1
        # No cursor moved: the failed steps recorded no materialization.
        assert {a: materialization_count(instance, a) for a in before} == before
        assert parity_counts(engine, client, "Work")["stale"] == 3
        assert parity_counts(engine, client, "Publisher")["orphan"] == 1

        _set_shards(client, "READY")  # space freed, shards set back
        started = time.monotonic()
        again = run_sync(pg_database, own_weaviate, instance=instance, mode="incremental", overlap_seconds=0)
        assert again.success
        assert metadata(again, "Work")["objects_written"] >= 3
        assert_parity_exact(engine, client)
        fault(
            "read_only", converge_s=round(time.monotonic() - started, 1), first_message=failures["Work"][:160]
        )
    finally:
        client.close()


# --- 2. Weaviate SIGKILLed mid full sync -------------------------------------------------------------


class KillingWeaviate(WeaviateResource):
    """The real resource, whose batch sender SIGKILLs the server while one chosen batch is in flight."""

    server_pid: int
    kill_at_batch: int = 5

    def send_objects(
        self, client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
    ) -> dict[int, str]:
        count = _KILL_COUNTER.setdefault(self.server_pid, 0) + 1
        _KILL_COUNTER[self.server_pid] = count
        if count == self.kill_at_batch:
            threading.Timer(0.005, os.kill, (self.server_pid, signal.SIGKILL)).start()
        return super().send_objects(client, collection, items)


_KILL_COUNTER: dict[int, int] = {}


def test_weaviate_killed_mid_full_sync_then_restarted_on_its_data_converges(
    tmp_path, pg_database, own_weaviate
):
    """SIGKILL while a batch is in flight; a supervisor restarts the server on its data folder and ports
    three seconds later (left dead, each step takes minutes to give up: docs/reliability.md)."""
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 3_000, seed=22)
    killer = KillingWeaviate(
        url=own_weaviate.url,
        grpc_port=own_weaviate.grpc_port,
        timeout_seconds=30,
        server_pid=own_weaviate.process.pid,
        kill_at_batch=6,
    )
    restarted: dict[str, Any] = {}

    def supervisor() -> None:
        own_weaviate.process.wait()
        restarted["killed_at"] = time.monotonic()
        time.sleep(3)
        restarted["server"] = start_weaviate(
            own_weaviate.data_dir, http_port=own_weaviate.http_port, grpc_port=own_weaviate.grpc_port
        )
        restarted["up_at"] = time.monotonic()

    watcher = threading.Thread(target=supervisor, daemon=True)
    watcher.start()
    first = run_sync(
        pg_database,
        own_weaviate,
        weaviate=killer,
        raise_on_error=False,
        retries=0,
        retry_attempts=3,
        retry_initial_wait=0.5,
        retry_max_wait=2.0,
    )
    watcher.join(120)
    assert own_weaviate.process.returncode == -signal.SIGKILL  # it was killed, mid-run
    server = restarted["server"]
    own_weaviate.process = server.process  # the fixture stops the new process
    first_s = round(time.monotonic() - restarted["killed_at"], 1)
    failed = failure_descriptions(first)
    client = connect(server)
    try:
        # What the first run left, before the second mends it (a success that lost acknowledged writes
        # would show here as missing objects).
        after_first = {
            e.collection: {k: n for k, n in parity_counts(engine, client, e.collection).items() if n}
            for e in ENTITIES
        }
        again = run_sync(pg_database, server)
        assert again.success
        assert_parity_exact(engine, client)
        fault(
            "weaviate_sigkill",
            restart_s=round(restarted["up_at"] - restarted["killed_at"], 1),
            first_run_success=first.success,
            failed_steps=sorted(failed),
            retried_batches=sum(
                metadata(first, e.collection)["retried_batches"]
                for e in ENTITIES
                if list(first.asset_materializations_for_node(e.collection))
            ),
            first_run_end_after_kill_s=first_s,
            parity_after_first_run={k: v for k, v in after_first.items() if v} or "exact",
            # objects the restart left unindexed (stored, not found by id), mended by either run
            reindexed_by_first_run=sum(
                metadata(first, e.collection)["objects_reindexed"]
                for e in ENTITIES
                if list(first.asset_materializations_for_node(e.collection))
            ),
            reindexed_by_second_run=sum(metadata(again, e.collection)["objects_reindexed"] for e in ENTITIES),
            converge_s=round(time.monotonic() - restarted["killed_at"], 1),
        )
    finally:
        client.close()


# --- 3. PostgreSQL: the sync's backends terminated mid run -------------------------------------------


class BackendKiller(threading.Thread):
    """Terminates the active PostgreSQL backends of one database (the sync's queries), ``kills`` times."""

    def __init__(self, admin_url: str, database: str, kills: int) -> None:
        super().__init__(daemon=True)
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.database, self.kills = database, kills
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        q = sa.text(
            "SELECT pid, left(query, 60) FROM pg_stat_activity WHERE datname = :db AND state = 'active' "
            "AND pid <> pg_backend_pid()"
        )
        with self.admin.connect() as conn:
            while not self.stop.is_set() and len(self.killed) < self.kills:
                for pid, query in conn.execute(q, {"db": self.database}).all():
                    if conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar():
                        self.killed.append(query)
                        time.sleep(1.0)  # let the step see it before the next one
                        break
                time.sleep(0.01)
        self.admin.dispose()


def test_postgres_backends_killed_mid_run_fail_or_retry_cleanly_and_no_cursor_skips_rows(
    postgres, pg_database, own_weaviate
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 2_000, seed=23)
    instance = dg.DagsterInstance.ephemeral()
    assert run_sync(pg_database, own_weaviate, instance=instance, overlap_seconds=0).success
    with engine.begin() as conn:  # many updates: the incremental run reads and writes for a while
        for table in ("works", "authors", "translations"):
            conn.execute(
                sa.text(f"UPDATE {table} SET updated_at = now() + interval '1 second' WHERE id % 3 = 0")
            )
        conn.execute(sa.text("UPDATE works SET title = 'while postgres died ' || id WHERE id % 3 = 0"))

    database = pg_database.rsplit("/", 1)[-1]
    killer = BackendKiller(postgres, database, kills=2)
    started = time.monotonic()
    killer.start()
    try:
        first = run_sync(
            pg_database,
            own_weaviate,
            instance=instance,
            mode="incremental",
            raise_on_error=False,
            overlap_seconds=0,
        )
    finally:
        killer.stop.set()
        killer.join(30)
    first_s = round(time.monotonic() - started, 1)
    assert killer.killed, "no backend of the sync was caught active"
    failures = failure_descriptions(first)
    # Every failure is the dropped connection (retried by the step's policy, or failing the run).
    for step, text in failures.items():
        assert "OperationalError" in text or "terminat" in text or "closed the connection" in text, (
            step,
            text,
        )

    started = time.monotonic()
    again = run_sync(pg_database, own_weaviate, instance=instance, mode="incremental", overlap_seconds=0)
    assert again.success
    # With no overlap window, a cursor that had moved past an unwritten row would leave it stale.
    assert_converged(engine, own_weaviate)
    fault(
        "postgres_backend_terminated",
        kills=len(killer.killed),
        queries=killer.killed,
        first_run_success=first.success,
        step_failures=sorted(failures),
        first_run_s=first_s,
        converge_s=round(time.monotonic() - started, 1),
    )


# --- 3. PostgreSQL: the postmaster SIGKILLed mid run, on a private cluster ----------------------------


class SignallingWeaviate(WeaviateResource):
    """The real resource, which sets the test's event ``event`` once the ``at_batch``-th batch of
    ``collection`` has landed (the step is then in the middle of its shard: more pages to read)."""

    event: str
    collection: str = "Work"
    at_batch: int = 2

    def send_objects(
        self, client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
    ) -> dict[int, str]:
        refused = super().send_objects(client, collection, items)
        if collection == self.collection:
            _SENT[self.event] = _SENT.get(self.event, 0) + 1
            if _SENT[self.event] == self.at_batch:
                _EVENTS[self.event].set()
        return refused


def step_errors(result: dg.ExecuteInProcessResult, kind: dg.DagsterEventType) -> list[tuple[str, str]]:
    """``(step, error)`` for every step retry or failure of a run; the error is the first line of each link
    of its chain, outermost first (``Exceeded max_retries of 3 <- psycopg2.OperationalError: ...``)."""
    out = []
    for event in result.all_events:
        if event.event_type == kind:
            data = event.event_specific_data
            error, lines = getattr(data, "error", None), []
            while error is not None:
                lines.append((error.message.strip().splitlines() or [error.cls_name or ""])[0])
                error = error.cause
            desc = getattr(getattr(data, "user_failure_data", None), "description", None)
            out.append((event.step_key, " <- ".join(([desc] if desc else []) + lines)))
    return out


_SENT: dict[str, int] = {}
_EVENTS: dict[str, threading.Event] = {}
# The assets' own RetryPolicy waits 15 s, exponential, with up to 15 s of jitter either way: its first
# retry may come before the server is back, its second 30 to 60 s later. A fixed delay keeps the test
# short and its timing stable; the mechanism is the same.
PG_RETRY = dg.RetryPolicy(max_retries=3, delay=5)
PG_DOWN_S = 3.0  # from the kill to the restart, as a service manager would


def test_postgres_postmaster_killed_mid_full_sync_then_restarted_converges(private_postgres, own_weaviate):
    """SIGKILL of the postmaster once the Work step's second batch has landed; a supervisor thread starts it
    again on the same data folder three seconds later (crash recovery), and the step's retry meets it back."""
    pg = private_postgres
    engine = reading.make_engine(pg.url())
    demo_data.generate(engine, 1_500, seed=26)
    key = f"postmaster-{pg.port}"
    _EVENTS[key] = threading.Event()
    sender = SignallingWeaviate(
        url=own_weaviate.url, grpc_port=own_weaviate.grpc_port, timeout_seconds=60, event=key
    )
    seen: dict[str, Any] = {}

    def supervisor() -> None:
        if not _EVENTS[key].wait(300):
            return
        with engine.begin() as conn:  # acknowledged just before the crash: in the WAL, not yet checkpointed
            seen["committed"] = conn.execute(
                sa.text(
                    "UPDATE works SET title = 'committed before the crash ' || id, updated_at = now() "
                    "WHERE id % 7 = 0"
                )
            ).rowcount
        seen["pid"] = pg.kill()
        seen["killed_at"] = time.monotonic()
        time.sleep(PG_DOWN_S)
        pg.restart()
        seen["up_at"] = time.monotonic()

    watcher = threading.Thread(target=supervisor, daemon=True)
    watcher.start()
    try:
        first = dg.materialize(
            build_assets(SHARDS, PG_RETRY),
            resources=resources(pg.url(), own_weaviate, weaviate=sender, batch_size=50),
            tags=all_shards_tags(SHARDS),
            raise_on_error=False,
        )
        first_ended = time.monotonic()
    finally:
        _EVENTS[key].set()  # a run that never reached the batch must not leave the thread waiting
        watcher.join(120)
    assert "killed_at" in seen, "the postmaster was not killed"
    assert seen["killed_at"] < first_ended, "the run had ended before the kill"
    assert "up_at" in seen, "the postmaster did not come back"
    assert pg.postmaster_pid() != seen["pid"]
    log = pg.log_file.read_text(errors="replace")
    assert "database system was not properly shut down; automatic recovery in progress" in log, log[-2000:]

    retries = step_errors(first, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    failures = step_errors(first, dg.DagsterEventType.STEP_FAILURE)
    assert retries or failures, "no step met the dead server: the kill came too late to prove anything"
    # Every error is the lost server, in words that say so (retried by the step's policy, or failing the run).
    lost = re.compile(r"OperationalError: (server closed the connection|connection to server|FATAL)", re.I)
    for step, text in [*retries, *failures]:
        assert lost.search(text), (step, text)

    with engine.connect() as conn:  # the commit acknowledged before the kill survived it
        survived = conn.execute(
            sa.text("SELECT count(*) FROM works WHERE title LIKE 'committed before the crash %'")
        ).scalar_one()
    assert survived == seen["committed"] > 0

    again = run_sync(pg.url(), own_weaviate)
    assert again.success
    assert_converged(engine, own_weaviate)
    converge_s = round(time.monotonic() - seen["killed_at"], 1)
    fault(
        "postgres_postmaster_sigkill",
        first_run_success=first.success,
        step_retries=[(step, text.rsplit(" <- ", 1)[-1]) for step, text in retries],
        step_failures=failures,
        first_run_end_after_kill_s=round(first_ended - seen["killed_at"], 1),
        restart_s=round(seen["up_at"] - seen["killed_at"], 1),
        committed_before_kill=seen["committed"],
        converge_s=converge_s,
    )
    print(f"postmaster SIGKILL to parity exact: {converge_s} s", flush=True)
    engine.dispose()


# --- 5. Weaviate frozen longer than the client's timeout ----------------------------------------------

# The figure is a 90 s freeze; the test freezes for longer than a client timeout shortened
# through the settings (TERCUL_SYNC_WEAVIATE_TIMEOUT), to keep the suite short. Set both to measure
# the long case: TERCUL_FAULT_FREEZE_S=90 TERCUL_FAULT_TIMEOUT_S=60.
FREEZE_S = float(os.environ.get("TERCUL_FAULT_FREEZE_S", "20"))
TIMEOUT_S = float(os.environ.get("TERCUL_FAULT_TIMEOUT_S", "8"))


def test_weaviate_frozen_longer_than_the_client_timeout_then_resumed_converges(pg_database, own_weaviate):
    assert FREEZE_S > TIMEOUT_S
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_000, seed=24)
    frozen = PausingWeaviate(
        url=own_weaviate.url,
        grpc_port=own_weaviate.grpc_port,
        timeout_seconds=TIMEOUT_S,
        server_pid=own_weaviate.process.pid,
        pause_at_batch=3,
        resume_after_s=FREEZE_S,
    )
    started = time.monotonic()
    first = run_sync(
        pg_database,
        own_weaviate,
        weaviate=frozen,
        raise_on_error=False,
        retries=0,
        retry_attempts=6,
        retry_initial_wait=1.0,
        retry_max_wait=TIMEOUT_S,
    )
    first_s = round(time.monotonic() - started, 1)
    os.kill(own_weaviate.process.pid, signal.SIGCONT)  # in case the run ended before the timer
    failures = failure_descriptions(first)
    retried = 0
    if first.success:
        retried = sum(metadata(first, e.collection)["retried_batches"] for e in ENTITIES)
        assert retried >= 1  # the timed-out batch was sent again once the server answered
    else:
        for text in failures.values():  # a clear message: the timeout or the unreachable server
            assert re.search(r"timed? ?out|Timeout|DEADLINE|UNAVAILABLE|gave up", text, re.I), text
    started = time.monotonic()
    again = run_sync(pg_database, own_weaviate, weaviate=weaviate_resource(own_weaviate))
    assert again.success
    assert_converged(engine, own_weaviate)
    fault(
        "weaviate_frozen",
        freeze_s=FREEZE_S,
        client_timeout_s=TIMEOUT_S,
        first_run_success=first.success,
        retried_batches=retried,
        step_failures=failures,
        first_run_s=first_s,
        next_run_s=round(time.monotonic() - started, 1),
    )


# --- 4 and 6. the real daemon: a step process SIGKILLed; eight concurrent runs -------------------------

REEXECUTE = """
mutation ($parent: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
MIXED_JOBS = [
    "full_sync",
    "incremental_sync",
    "sync_work",
    "sync_author",
    "sync_edges",
    "orphan_sweep",
    "incremental_sync",
    "sync_tag",
]


def _events(db: sa.Engine, run_id: str, kinds: tuple[str, ...]) -> list[tuple[str, str, Any, str]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT step_key, dagster_event_type, timestamp, event FROM event_logs "
                    "WHERE run_id = :r AND dagster_event_type = ANY(:k) ORDER BY id"
                ),
                {"r": run_id, "k": list(kinds)},
            )
        ]


def _submit(client: DagsterGraphQLClient, job: str) -> str:
    return client.submit_job_execution(
        job, repository_location_name="tercul_sync", repository_name="__repository__"
    )


def _hold_mid_write(pid: int, works: Any, total: int, batch: int, slice_s: float = 0.01) -> int:
    """Run the stopped step process in short slices until some of its writes have landed and at
    least two batches have not; return the number landed with the process stopped again (SIGSTOP).

    Polling while the step runs free lost the race on a loaded CI machine: the step wrote its last
    batches and materialized between the poll that saw the first batch and the signal. Stopped, the
    step cannot move while its progress is read. The caller stops it before its first read of the
    table, so no write can have landed before the first slice.
    """
    landed_filter = Filter.by_property("title").like("step killed*")
    deadline = time.monotonic() + 300
    while True:
        landed = works.aggregate.over_all(filters=landed_filter, total_count=True).total_count or 0
        if landed:
            assert landed <= total - 2 * batch, f"{landed} of {total} landed within one slice"
            return landed
        assert time.monotonic() < deadline, "the Work step wrote nothing"
        os.kill(pid, signal.SIGCONT)
        time.sleep(slice_s)
        os.kill(pid, signal.SIGSTOP)


def test_step_process_killed_on_the_daemon_then_eight_concurrent_runs(
    tmp_path,
    dagster_pg,  # noqa: F811 (the fixture imported above)
    pg_database,
    weaviate_server_proc,
    weaviate_client,
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 800, seed=25)  # small: eight runs on two cores must stay quick
    storage = PostgresStorage(
        dagster_pg, PG_USER, PG_PASSWORD, port=int(os.environ.get("TERCUL_PG_PORT", "5432"))
    )
    settings = {
        "TERCUL_DATABASE_URL": pg_database,
        "TERCUL_SYNC_HOME": str(tmp_path / "home"),
        "WEAVIATE_URL": weaviate_server_proc.url,
        "WEAVIATE_GRPC_PORT": str(weaviate_server_proc.grpc_port),
        "TERCUL_SYNC_VECTORIZER": "none",
        "TERCUL_SYNC_PASSAGES": "false",  # parity covers the entity collections; passages would add minutes
        # Many batches, one at a time: the kill lands inside the Work step's writes (with 20 a batch and
        # two in flight, CI once saw the step finish and materialize before the signal).
        "TERCUL_SYNC_BATCH_SIZE": "10",
        "TERCUL_SYNC_BATCHES_IN_FLIGHT": "1",
        "TERCUL_SYNC_OVERLAP_SECONDS": "0",  # a cursor that moved too far would show as stale rows
        "TERCUL_SYNC_SENSOR_INTERVAL": "3600",  # no sensor run in the middle of the test's own
    }
    # The repo's own dagster.yaml (run monitoring on, one slot per pool), in a DAGSTER_HOME of its own.
    deployment = dagster_deployment.start(tmp_path / "dagster_home", storage, settings)
    port = deployment.port
    dagster_db = sa.create_engine(
        f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{storage.port}/{dagster_pg}"
    )
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        first = _submit(client, "full_sync")
        assert _wait(lambda: _finished(client, first), 900, "the full sync") == "SUCCESS"
        assert_parity_exact(engine, weaviate_client, load_settings(settings))

        # --- the step process, SIGKILLed while it writes ---
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE works SET title = 'step killed ' || id, updated_at = now() + interval '1 second'"
                )
            )
        # The test holds the works table (ACCESS EXCLUSIVE) until the Work step is found and stopped:
        # the step cannot write a work before it has read one, so however late the poll below sees
        # its STEP_START, nothing has landed yet. CI once saw all 230 land before the signal.
        holder = engine.connect()
        hold = holder.begin()
        holder.execute(sa.text("LOCK TABLE works IN ACCESS EXCLUSIVE MODE"))
        run_id = _submit(client, "incremental_sync")
        works = weaviate_client.collections.use("Work")

        def step_pid() -> int | None:
            for step, _, _, event in _events(dagster_db, run_id, ("STEP_START",)):
                if step == "Work":  # the event is emitted by the step's own process, with its pid
                    return int(json.loads(event)["dagster_event"]["pid"])
            return None

        # Stopped as soon as found, then the table let go: from here the step moves only in the short
        # slices of _hold_mid_write.
        try:
            pid = _wait(step_pid, 600, "the Work step to start", interval_s=0.02)
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pytest.fail(f"the Work step (pid {pid}) had ended before it was stopped")
        finally:
            hold.commit()
            holder.close()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert "python" in cmdline, cmdline  # the step's own process (a child of the run worker we launched)
        # Forked from the run worker itself (defs/executors.py: the run worker a code server starts
        # runs only waiting helpers besides its main thread), not from a forkserver: its parent is
        # the process that started the run.
        run_worker = next(
            int(json.loads(event)["dagster_event"]["pid"])
            for _, _, _, event in _events(dagster_db, run_id, ("PIPELINE_START",))
        )
        status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        parent = next(int(line.split()[1]) for line in status_lines if line.startswith("PPid:"))
        assert parent == run_worker, (pid, parent, run_worker)
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM works WHERE deleted_at IS NULL")).scalar_one()
        landed = _hold_mid_write(pid, works, total=total, batch=int(settings["TERCUL_SYNC_BATCH_SIZE"]))
        try:
            # Held still mid-write: nothing recorded for Work in this run yet.
            recorded = _events(dagster_db, run_id, ("ASSET_MATERIALIZATION",))
            assert not [step for step, _, _, _ in recorded if step == "Work"], recorded
        finally:
            os.kill(pid, signal.SIGKILL)  # a stopped process takes SIGKILL as it is
        killed_at = time.monotonic()
        status = _wait(lambda: _finished(client, run_id), 900, "the killed run")
        ended_s = round(time.monotonic() - killed_at, 1)
        kinds = (
            "ASSET_MATERIALIZATION",
            "STEP_START",
            "STEP_SUCCESS",
            "STEP_FAILURE",
            "STEP_UP_FOR_RETRY",
            "STEP_RESTARTED",
        )
        work_events = [k for step, k, _, _ in _events(dagster_db, run_id, kinds) if step == "Work"]
        # The killed attempt recorded nothing: no materialization (no cursor) before it was failed.
        first_end = next(i for i, k in enumerate(work_events) if k in ("STEP_FAILURE", "STEP_UP_FOR_RETRY"))
        assert "ASSET_MATERIALIZATION" not in work_events[:first_end], work_events
        if status == "FAILURE":  # the step's retries ran out, or the run worker gave up: re-execute
            launched = deployment.graphql(REEXECUTE, {"parent": run_id})["launchRunReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            child = launched["run"]["runId"]
            assert _wait(lambda: _finished(client, child), 900, "the re-execution") == "SUCCESS"
        else:  # the executor saw the crash and the asset's RetryPolicy ran the step again
            assert status == "SUCCESS" and "STEP_UP_FOR_RETRY" in work_events, (status, work_events)
        assert_parity_exact(engine, weaviate_client, load_settings(settings))
        fault(
            "step_process_sigkill",
            run_status=status,
            works_landed_before_kill=f"{landed} of {total}",
            run_ended_after_kill_s=ended_s,
            converge_s=round(time.monotonic() - killed_at, 1),
            work_events=work_events,
        )

        # --- eight concurrent runs of mixed jobs ---
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE works SET title = 'concurrent ' || id, updated_at = now() WHERE id % 5 = 0")
            )
            conn.execute(
                sa.text("UPDATE authors SET deleted_at = now(), updated_at = now() WHERE id % 17 = 0")
            )
            conn.execute(sa.text("DELETE FROM tags WHERE id % 11 = 0"))
            conn.execute(sa.text("UPDATE edges SET deleted_at = now(), updated_at = now() WHERE id % 13 = 0"))
        started = time.monotonic()
        runs = [_submit(client, job) for job in MIXED_JOBS]
        statuses = [_wait(lambda r=r: _finished(client, r), 1500, "the concurrent runs") for r in runs]
        all_s = round(time.monotonic() - started, 1)
        assert statuses == ["SUCCESS"] * len(runs), list(zip(MIXED_JOBS, statuses, strict=True))
        # The pools kept same-type writers apart: no two steps of one asset overlap in time. The
        # parity checks only read (one step, parity_checks, in every run): they may overlap.
        spans: dict[str, list[tuple[float, float]]] = {}
        for r in runs:
            open_at: dict[str, Any] = {}
            for step, kind, stamp, _ in _events(
                dagster_db, r, ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
            ):
                if step == PARITY_STEP:
                    continue
                if kind == "STEP_START":
                    open_at[step] = stamp
                elif step in open_at:
                    spans.setdefault(step, []).append((open_at.pop(step), stamp))
        for step, intervals in spans.items():
            ordered = sorted(intervals)
            for (_, end), (start, _) in itertools.pairwise(ordered):
                assert end <= start, f"two {step} steps ran at once: {ordered}"
        # Some of them did run side by side (different types), or the test proves nothing about pools.
        assert max(len(v) for v in spans.values()) >= 3
        # All eight read one state: together they reach it.
        assert_parity_exact(engine, weaviate_client, load_settings(settings))
        fault(
            "eight_concurrent_runs",
            all_ended_s=all_s,
            steps_per_asset={k: len(v) for k, v in sorted(spans.items())},
            converge_s=round(time.monotonic() - started, 1),
        )
    finally:
        deployment.stop()
        dagster_db.dispose()
