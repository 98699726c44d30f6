"""Dagster's webserver and daemon, with the repo's dagster.yaml on PostgreSQL storage, driven for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient

from tercul_sync.defs.assets import EDGES_ASSET, PASSAGES_ASSET
from tercul_sync.devtools import demo_data
from tercul_sync.devtools.weaviate_server import free_port
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import ENTITIES
from tercul_sync_tests.conftest import PG_PASSWORD, PG_USER, ROOT, drop_database, new_database
from tercul_sync_tests.helpers import expected_objects

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent
ASSETS_QUERY = """
query { assetNodes { assetKey { path } groupName isPartitioned partitionKeys kinds } }
"""
SCHEDULE_QUERY = """
query { schedulesOrError(repositorySelector:
    {repositoryLocationName: "tercul_sync", repositoryName: "__repository__"}) {
  ... on Schedules { results { name cronSchedule scheduleState { status } } } } }
"""


@pytest.fixture
def dagster_pg(postgres: str) -> Iterator[str]:
    """A new PostgreSQL database for Dagster's own storage (runs, events, schedules)."""
    name = new_database(postgres, "dagster_t")
    try:
        yield name
    finally:
        drop_database(postgres, name)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _finished(client: DagsterGraphQLClient, run_id: str) -> str | None:
    status = client.get_run_status(run_id).value
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_webserver_and_daemon_run_full_sync_on_postgres_storage(
    tmp_path, dagster_pg, pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_500, seed=8)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the repo's own production config
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERCUL_", "WEAVIATE_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_HOST="127.0.0.1",
        DAGSTER_PG_PORT=os.environ.get("TERCUL_PG_PORT", "5432"),
        DAGSTER_PG_DB=dagster_pg,
        DAGSTER_PG_USERNAME=PG_USER,
        DAGSTER_PG_PASSWORD=PG_PASSWORD,
        TERCUL_DATABASE_URL=pg_database,
        TERCUL_SYNC_HOME=str(tmp_path / "home"),
        WEAVIATE_URL=weaviate_server_proc.url,
        WEAVIATE_GRPC_PORT=str(weaviate_server_proc.grpc_port),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        _spawn(
            ["dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            env,
            logs / "webserver.log",
        )
    ]
    procs.append(_spawn(["dagster-daemon", "run", "-w", "workspace.yaml"], env, logs / "daemon.log"))
    try:

        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 120, "the webserver")
        schedules = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": SCHEDULE_QUERY}, timeout=30
        ).json()
        found = {
            r["name"]: (r["cronSchedule"], r["scheduleState"]["status"])
            for r in schedules["data"]["schedulesOrError"]["results"]
        }
        assert found == {
            "nightly_full_sync": ("0 2 * * *", "RUNNING"),
            "incremental_sync_schedule": ("*/10 * * * *", "RUNNING"),
            "orphan_sweep_schedule": ("30 * * * *", "RUNNING"),
        }

        # What the UI shows: one asset per entity type plus edges and passages, in one group, with the shards.
        nodes = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": ASSETS_QUERY}, timeout=30
        ).json()["data"]["assetNodes"]
        shown = {
            n["assetKey"]["path"][0]: (
                n["groupName"],
                n["isPartitioned"],
                len(n["partitionKeys"]),
                "weaviate" in n["kinds"],
            )
            for n in nodes
        }
        assert shown == {
            name: ("tercul", True, 8, True)
            for name in [*(e.collection for e in ENTITIES), EDGES_ASSET, PASSAGES_ASSET]
        }

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution(
            "full_sync", repository_location_name="tercul_sync", repository_name="__repository__"
        )
        # The queued run coordinator holds the run until the daemon launches it.
        status = _wait(lambda: _finished(client, run_id), 600, "the run")
        assert status == "SUCCESS", (logs / "daemon.log").read_text()[-3000:]

        # Two incremental syncs launched at once: the Work pool's single slot serialises their Work steps.
        twins = [
            client.submit_job_execution(
                "incremental_sync", repository_location_name="tercul_sync", repository_name="__repository__"
            )
            for _ in range(2)
        ]
        assert [_wait(lambda r=r: _finished(client, r), 600, "the twin runs") for r in twins] == [
            "SUCCESS",
            "SUCCESS",
        ]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    for e in ENTITIES:
        assert wc.count_objects(weaviate_client, e.collection) == len(expected_objects(engine, e)), (
            e.collection
        )
    # The run and its materializations live in PostgreSQL, not in files under DAGSTER_HOME.
    dagster_db = sa.create_engine(
        f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{env['DAGSTER_PG_PORT']}/{dagster_pg}"
    )
    with dagster_db.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one()
            == "SUCCESS"
        )
        n = conn.execute(
            sa.text(
                "SELECT count(*) FROM event_logs "
                "WHERE run_id = :r AND dagster_event_type = 'ASSET_MATERIALIZATION'"
            ),
            {"r": run_id},
        ).scalar_one()
        assert n >= len(ENTITIES) + 1
        spans = []
        for twin in twins:
            times = conn.execute(
                sa.text(
                    "SELECT dagster_event_type, timestamp FROM event_logs "
                    "WHERE run_id = :r AND step_key = 'Work' "
                    "AND dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') ORDER BY timestamp"
                ),
                {"r": twin},
            ).all()
            assert [t[0] for t in times] == ["STEP_START", "STEP_SUCCESS"], times
            spans.append((times[0][1], times[-1][1]))
        (_, end_first), (start_second, _) = sorted(spans)
        assert end_first <= start_second, f"two Work steps ran at once: {spans}"
    dagster_db.dispose()
