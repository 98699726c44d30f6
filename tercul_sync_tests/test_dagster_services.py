"""Dagster's webserver and daemon, with the repo's dagster.yaml on PostgreSQL storage, driven for real."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient

from tercul_sync.defs.assets import EDGES_ASSET, PASSAGES_ASSET
from tercul_sync.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, shard_from_key
from tercul_sync.defs.sensors import CHANGES_JOB
from tercul_sync.devtools import dagster_deployment, demo_data
from tercul_sync.devtools.dagster_deployment import PostgresStorage
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.registry import ENTITIES, entity, object_uuid
from tercul_sync.engine.settings import Settings, load_settings
from tercul_sync.trigger import (
    RunOutcome,
    SyncTrigger,
    enqueue_edge_sync,
    enqueue_entity_sync,
    enqueue_full_sync,
    enqueue_rows,
)
from tercul_sync_tests.conftest import PG_PASSWORD, PG_USER, drop_database, new_database
from tercul_sync_tests.helpers import expected_objects

pytestmark = pytest.mark.services

ASSETS_QUERY = """
query { assetNodes { assetKey { path } groupName isPartitioned partitionKeys kinds } }
"""
SENSOR_QUERY = """
query { sensorsOrError(repositorySelector:
    {repositoryLocationName: "tercul_sync", repositoryName: "__repository__"}) {
  ... on Sensors { results { name minIntervalSeconds sensorState { status } } } } }
"""
RUNS_QUERY = """
query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {
  ... on Runs { results { runId jobName status tags { key value } assetSelection { path } } } } }
"""
BACKFILL_MUTATION = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL_QUERY = """
query ($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }
"""
# The mutation docs/triggers.md gives services in other languages (there with curl).
LAUNCH_RUN_MUTATION = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""
SENSOR_INTERVAL = 5  # the services deployment checks every 5 s; the default is 30
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


def _finished(client: DagsterGraphQLClient, run_id: str) -> str | None:
    status = client.get_run_status(run_id).value
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def _wait(predicate, timeout: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    answer = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
    ).json()
    assert "errors" not in answer, answer
    return answer["data"]


def _runs(port: int, trigger: str) -> list[dict]:
    """The runs tagged as launched by ``trigger`` (the client, the sensor, a schedule)."""
    variables = {"tags": [{"key": "tercul_sync/trigger", "value": trigger}]}
    return _graphql(port, RUNS_QUERY, variables)["runsOrError"]["results"]


def _enqueue_functions_launch_runs_that_sync(port: int, engine: sa.Engine, weaviate_client) -> None:
    """Each enqueue function, the documented mutation: the runs appear, succeed, and the rows arrive."""
    settings = load_settings({"TERCUL_SYNC_DAGSTER_URL": f"http://127.0.0.1:{port}"})
    trigger = SyncTrigger(settings)

    outcome = enqueue_entity_sync("Author", wait=True, timeout=600, settings=settings)
    assert outcome == RunOutcome(outcome.run_id, "SUCCESS")
    assert wc.count_objects(weaviate_client, "Author") == len(expected_objects(engine, entity("Author")))

    run_id = enqueue_edge_sync(batch_size=100, offset=0, settings=settings)  # no wait: the run id
    assert isinstance(run_id, str)
    assert trigger.wait(run_id, timeout=600).succeeded
    [run] = [r for r in _runs(port, "client") if r["runId"] == run_id]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["jobName"] == "sync_edges" and run["status"] == "SUCCESS"
    # The job's own tags came with it: every shard, of the deployment's shard count.
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        "shard-0",
        "shard-7",
    )

    # Changes no cursor and no sensor can see (updated_at untouched, an old deleted_at, the same
    # counts): only enqueue_rows brings them over, and it does at once.
    with engine.begin() as conn:
        a, b, gone = conn.execute(
            sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id LIMIT 3")
        ).scalars()
        assert conn.execute(sa.text("SELECT count(*) FROM works WHERE deleted_at IS NOT NULL")).scalar_one()
        conn.execute(sa.text(f"UPDATE works SET title = 'enqueued ' || id WHERE id IN ({a}, {b})"))
        conn.execute(sa.text(f"UPDATE works SET deleted_at = '2000-01-01' WHERE id = {gone}"))
    outcome = enqueue_rows("Work", [a, b, gone], wait=True, timeout=600, settings=settings)
    assert outcome.succeeded
    works = weaviate_client.collections.use("Work")
    for i in (a, b):
        assert works.query.fetch_object_by_id(object_uuid("Work", i)).properties["title"] == f"enqueued {i}"
    assert works.query.fetch_object_by_id(object_uuid("Work", gone)) is None

    # Services in other languages: the GraphQL mutation docs/triggers.md shows with curl.
    params = {
        "selector": {
            "repositoryLocationName": "tercul_sync",
            "repositoryName": "__repository__",
            "jobName": "sync_tag",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "tercul_sync/trigger", "value": "curl"}]},
    }
    launched = _graphql(port, LAUNCH_RUN_MUTATION, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert trigger.wait(launched["run"]["runId"], timeout=600).succeeded


def _sensor_syncs_a_change_with_no_manual_step(port: int, engine: sa.Engine, weaviate_client) -> list[str]:
    """An update to a Work reaches Weaviate through the sensor alone; then, idle, no run is launched."""
    [sensor] = _graphql(port, SENSOR_QUERY)["sensorsOrError"]["results"]
    assert (sensor["name"], sensor["minIntervalSeconds"], sensor["sensorState"]["status"]) == (
        "tercul_changes",
        SENSOR_INTERVAL,
        "RUNNING",
    )
    before = {r["runId"] for r in _runs(port, "tercul_changes")}
    with engine.begin() as conn:
        work_id = conn.execute(
            sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id DESC LIMIT 1")
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE works SET title = :t, updated_at = now() WHERE id = :i"),
            {"t": f"seen by the sensor {work_id}", "i": work_id},
        )
    started = time.monotonic()
    works = weaviate_client.collections.use("Work")

    def visible() -> bool:
        obj = works.query.fetch_object_by_id(object_uuid("Work", work_id))
        return obj is not None and obj.properties["title"] == f"seen by the sensor {work_id}"

    _wait(visible, 300, "the sensor's run to bring the update over")
    print(f"update visible in Weaviate {time.monotonic() - started:.1f} s after its commit")
    new = [r for r in _runs(port, "tercul_changes") if r["runId"] not in before]
    assert new, "the update reached Weaviate without a run of the sensor"
    for r in new:
        # An update only: the Work objects and their passages; no reference list changed, so no edges.
        assert sorted(k["path"][0] for k in r["assetSelection"]) == sorted(["Work", PASSAGES_ASSET])
        assert r["jobName"] == CHANGES_JOB
        assert {t["key"]: t["value"] for t in r["tags"]}["tercul_sync/mode"] == "incremental"
    client = SyncTrigger(load_settings({"TERCUL_SYNC_DAGSTER_URL": f"http://127.0.0.1:{port}"}))
    assert all(client.wait(r["runId"], timeout=600).succeeded for r in new)
    # Idle: four more checks, no run.
    seen = {r["runId"] for r in _runs(port, "tercul_changes")}
    time.sleep(4 * SENSOR_INTERVAL)
    assert {r["runId"] for r in _runs(port, "tercul_changes")} == seen
    return [r["runId"] for r in new]


def _backfill_runs_one_run_per_shard(
    port: int, engine: sa.Engine, weaviate_client, settings: Settings
) -> None:
    """With ``TERCUL_SYNC_BACKFILL_POLICY=multi_run``, a backfill of three Tag shards from the asset
    graph (what the UI's "Materialize selected" over a range does) is three runs, one per shard."""
    keys = ["shard-1", "shard-3", "shard-5"]
    params = {"partitionNames": keys, "assetSelection": [{"path": ["Tag"]}], "fromFailure": False}
    launched = _graphql(port, BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = launched["backfillId"]

    def done() -> str | None:
        status = _graphql(port, BACKFILL_QUERY, {"id": backfill})["partitionBackfillOrError"]["status"]
        return status if status in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED") else None

    assert _wait(done, 600, "the backfill") in ("COMPLETED", "COMPLETED_SUCCESS")
    runs = _graphql(port, RUNS_QUERY, {"tags": [{"key": "dagster/backfill", "value": backfill}]})
    runs = runs["runsOrError"]["results"]
    # One run per shard, each tagged with its own (a one-partition range, or the partition itself).
    partitions = sorted(
        t["value"] for r in runs for t in r["tags"] if t["key"] in ("dagster/partition", RANGE_START_TAG)
    )
    ends = sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == RANGE_END_TAG)
    assert partitions == keys and ends in ([], keys), [r["tags"] for r in runs]
    assert {r["status"] for r in runs} == {"SUCCESS"}
    shards = [shard_from_key(k, 8) for k in keys]
    report = check_parity(engine, weaviate_client, entity("Tag"), shards, settings)
    assert report.exact, report.describe()


def test_webserver_and_daemon_run_full_sync_on_postgres_storage(
    tmp_path, dagster_pg, pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_500, seed=8)
    storage = PostgresStorage(
        dagster_pg, PG_USER, PG_PASSWORD, port=int(os.environ.get("TERCUL_PG_PORT", "5432"))
    )
    settings = {
        "TERCUL_DATABASE_URL": pg_database,
        "TERCUL_SYNC_HOME": str(tmp_path / "home"),
        "WEAVIATE_URL": weaviate_server_proc.url,
        "WEAVIATE_GRPC_PORT": str(weaviate_server_proc.grpc_port),
        "TERCUL_SYNC_SENSOR_INTERVAL": str(SENSOR_INTERVAL),
        "TERCUL_SYNC_BACKFILL_POLICY": "multi_run",  # jobs still run every shard in one run
    }
    # The repo's own production config (dagster.yaml), in a DAGSTER_HOME of its own.
    deployment = dagster_deployment.start(tmp_path / "dagster_home", storage, settings)
    port, env = deployment.port, deployment.env
    try:
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
            "parity_schedule": ("45 3 * * *", "RUNNING"),
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
        run_id = enqueue_full_sync(
            settings=load_settings({"TERCUL_SYNC_DAGSTER_URL": f"http://127.0.0.1:{port}"})
        )
        # The queued run coordinator holds the run until the daemon launches it.
        status = _wait(lambda: _finished(client, run_id), 600, "the run")
        assert status == "SUCCESS", deployment.log_tail()

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

        _enqueue_functions_launch_runs_that_sync(port, engine, weaviate_client)
        sensor_runs = _sensor_syncs_a_change_with_no_manual_step(port, engine, weaviate_client)
        _backfill_runs_one_run_per_shard(port, engine, weaviate_client, load_settings(env))
    finally:
        deployment.stop()

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
        # The sensor's runs ran their steps in the run's own process (sync_changes' in-process
        # executor); full_sync's steps each in a process of their own (the multiprocess executor).
        for run, one_process in [*((r, True) for r in sensor_runs), (run_id, False)]:
            events = [
                dg.deserialize_value(e, dg.EventLogEntry)
                for e in conn.execute(
                    sa.text(
                        "SELECT event FROM event_logs WHERE run_id = :r "
                        "AND dagster_event_type IN ('PIPELINE_START', 'STEP_START')"
                    ),
                    {"r": run},
                ).scalars()
            ]
            pids = {e.dagster_event.pid for e in events if e.dagster_event is not None}
            assert len(events) >= 3 and (len(pids) == 1) is one_process, (run, pids)
            if one_process:  # the sensor's run: its two assets' steps, no parity check step
                assert sorted(e.step_key for e in events if e.step_key) == ["Work", PASSAGES_ASSET], run
    dagster_db.dispose()
