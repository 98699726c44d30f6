"""Triggers: the change sensor (against a real PostgreSQL), a rows-only run, and the client's errors.

The enqueue functions against a real webserver and daemon, and the sensor
driving the daemon end to end, are in ``test_dagster_services.py``: they share
its deployment instead of starting another.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.definitions import defs
from tercul_sync.defs import jobs
from tercul_sync.defs.assets import CHECK_NAME, EDGES_ASSET, MODE_TAG, PASSAGES_ASSET, VECTOR_CHECK
from tercul_sync.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from tercul_sync.defs.resources import TerculDatabase
from tercul_sync.defs.sensors import (
    CHANGED_TAG,
    CHANGES_JOB,
    SENSOR_NAME,
    assets_between,
    assets_for,
    tercul_changes,
)
from tercul_sync.devtools import cli, demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.changes import changed_tables
from tercul_sync.engine.registry import entity, object_uuid
from tercul_sync.engine.settings import load_settings
from tercul_sync.trigger import (
    DagsterUnreachableError,
    SyncTrigger,
    enqueue_edge_sync,
    enqueue_entity_sync,
    enqueue_full_sync,
    enqueue_rows,
)
from tercul_sync.trigger import client as trigger_client
from tercul_sync_tests.helpers import metadata, run_sync

# --- the client, without a deployment ------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.unit
def test_every_enqueue_call_says_dagster_is_not_reachable_when_it_is_down():
    url = f"http://127.0.0.1:{_closed_port()}"
    settings = load_settings({"TERCUL_SYNC_DAGSTER_URL": url})
    calls = [
        lambda: enqueue_entity_sync("Work", settings=settings),
        lambda: enqueue_edge_sync(batch_size=100, offset=0, settings=settings),
        lambda: enqueue_full_sync(settings=settings),
        lambda: enqueue_rows("Work", [1, 2, 3], settings=settings),
        lambda: SyncTrigger(settings).status("no-such-run"),
    ]
    for call in calls:
        with pytest.raises(DagsterUnreachableError, match=f"Dagster at {url} is not reachable"):
            call()


@pytest.mark.unit
def test_the_command_line_reports_an_unreachable_dagster_and_exits_2(monkeypatch, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("TERCUL_SYNC_DAGSTER_URL", url)
    assert cli.main(["enqueue", "rows", "Work", "1", "2", "3", "--wait"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"tercul-sync enqueue: Dagster at {url} is not reachable" in captured.err


@pytest.mark.unit
def test_arguments_are_checked_before_dagster_is_called():
    with pytest.raises(KeyError, match="unknown entity type 'Wrk'; known: Author, Work"):
        enqueue_entity_sync("Wrk")
    with pytest.raises(ValueError, match="at least one id"):
        enqueue_rows("Work", [])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        enqueue_edge_sync(batch_size=0)


@pytest.mark.unit
def test_the_token_goes_in_the_configured_header_and_the_path_is_the_prefix():
    def headers(**env: str) -> Any:
        trigger = SyncTrigger(load_settings(env))
        return trigger._client._url, trigger._client._transport.headers  # type: ignore[attr-defined]

    assert headers() == ("http://127.0.0.1:3000/graphql", None)
    assert headers(
        TERCUL_SYNC_DAGSTER_URL="https://dagster.internal/ops/", TERCUL_SYNC_DAGSTER_TOKEN="t0k"
    ) == (
        "https://dagster.internal/ops/graphql",
        {"Authorization": "Bearer t0k"},
    )
    assert headers(
        TERCUL_SYNC_DAGSTER_TOKEN="t0k", TERCUL_SYNC_DAGSTER_TOKEN_HEADER="Dagster-Cloud-Api-Token"
    )[1] == {"Dagster-Cloud-Api-Token": "t0k"}


@pytest.mark.unit
def test_the_client_names_what_the_code_location_defines():
    """The client does not import the definitions (a service need not load them); its names must match."""
    assert trigger_client.TRIGGER_TAG == jobs.TRIGGER_TAG
    assert trigger_client.EDGES_ASSET == EDGES_ASSET
    assert defs.resolve_job_def("sync_work") and defs.resolve_job_def("sync_edges")
    assert defs.resolve_job_def("full_sync")


# --- the sensor's pure parts -----------------------------------------------------------------------------


@pytest.mark.unit
def test_what_each_changed_table_sends_to_the_run():
    assert assets_for(["works"]) == ["Work", EDGES_ASSET, PASSAGES_ASSET]
    assert assets_for(["translations"]) == ["Translation", EDGES_ASSET, PASSAGES_ASSET]
    assert assets_for(["tags", "authors"]) == ["Author", "Tag", EDGES_ASSET]
    assert assets_for(["edges"]) == [EDGES_ASSET]
    assert assets_for([]) == []
    # Rows only updated: each object is rewritten whole by its asset; the edges are not needed...
    assert assets_for(["works"], updates_only=["works"]) == ["Work", PASSAGES_ASSET]
    assert assets_for(["tags", "authors"], updates_only=["tags", "authors"]) == ["Author", "Tag"]
    # ...unless another table asks for them.
    assert assets_for(["tags", "authors"], updates_only=["tags"]) == ["Author", "Tag", EDGES_ASSET]
    assert assets_for(["works", "edges"], updates_only=["works"]) == ["Work", EDGES_ASSET, PASSAGES_ASSET]


_MARKS = {
    "works": {"updated_at": "2024-01-01T00:00:00+00:00", "deleted_at": None, "count": 3},
    "authors": {"updated_at": "2024-01-01T00:00:00+00:00", "deleted_at": None, "count": 3},
    "edges": {"updated_at": "2024-01-01T00:00:00+00:00", "deleted_at": None, "count": 3},
}


def _moved(table: str, **marks: Any) -> dict[str, dict[str, Any]]:
    return {**_MARKS, table: {**_MARKS[table], **marks}}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("after", "assets"),
    [
        (_MARKS, []),
        # an update: only the newest updated_at moves
        (_moved("works", updated_at="2024-02-01T00:00:00+00:00"), ["Work", PASSAGES_ASSET]),
        (_moved("authors", updated_at="2024-02-01T00:00:00+00:00"), ["Author"]),
        # an insert: the count moves too, and new targets need reference lists
        (
            _moved("authors", updated_at="2024-02-01T00:00:00+00:00", count=4),
            ["Author", EDGES_ASSET],
        ),
        # a soft delete: the newest deleted_at
        (_moved("works", deleted_at="2024-02-01T00:00:00+00:00"), ["Work", EDGES_ASSET, PASSAGES_ASSET]),
        # an undelete of the newest soft-deleted row: the newest deleted_at goes back
        (_moved("authors", updated_at="2024-02-01T00:00:00+00:00", deleted_at=None), ["Author"]),
        # a hard delete: the count alone
        (_moved("authors", count=2), ["Author", EDGES_ASSET]),
        # a changed edge, updates only: still the edges
        (_moved("edges", updated_at="2024-02-01T00:00:00+00:00"), [EDGES_ASSET]),
        # a table the previous check did not know
        ({**_MARKS, "tags": _MARKS["authors"]}, ["Tag", EDGES_ASSET]),
    ],
)
def test_the_run_leaves_out_the_edges_when_rows_were_only_updated(after, assets):
    changed, selected = assets_between(_MARKS, after)
    assert changed == changed_tables(_MARKS, after)
    assert selected == sorted(assets)


@pytest.mark.unit
def test_changed_tables_compares_every_mark():
    before = {
        "works": {"updated_at": "2024-01-01T00:00:00+00:00", "deleted_at": None, "count": 3},
        "tags": {"updated_at": "2024-01-01T00:00:00+00:00", "deleted_at": None, "count": 3},
    }
    assert changed_tables(before, before) == []
    after = {**before, "tags": {**before["tags"], "count": 2}}  # a hard delete
    assert changed_tables(before, after) == ["tags"]
    after = {**after, "works": {**before["works"], "deleted_at": "2024-02-01T00:00:00+00:00"}}
    assert changed_tables(before, after) == ["tags", "works"]
    assert changed_tables({}, before) == ["tags", "works"]


@pytest.mark.unit
def test_the_sensor_is_on_every_30_seconds_and_runs_incremental_sync_in_one_process():
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    assert sensor.job_name == CHANGES_JOB
    # incremental_sync's assets and tags, but its small runs in the run's own process.
    changes, incremental = defs.resolve_job_def(CHANGES_JOB), defs.resolve_job_def("incremental_sync")
    assert changes.executor_def is dg.in_process_executor
    assert incremental.executor_def is not dg.in_process_executor
    assert changes.tags == incremental.tags
    assert set(changes.asset_layer.executable_asset_keys) == set(
        incremental.asset_layer.executable_asset_keys
    )
    # The ten-minute schedule stays, as the safety net.
    assert defs.resolve_schedule_def("incremental_sync_schedule").cron_schedule == "*/10 * * * *"


# --- the sensor against PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
def tercul_pg(pg_database: str) -> Iterator[sa.Engine]:
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 400, seed=11)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def tick(tercul_pg: sa.Engine) -> Iterator[Callable[[str | None], dg.SensorExecutionData]]:
    """One evaluation of the sensor from a cursor, as the daemon makes it: its resource, an instance."""
    resources = {"tercul_db": TerculDatabase(url=tercul_pg.url.render_as_string(hide_password=False))}
    with dg.instance_for_test() as instance:

        def evaluate(cursor: str | None) -> dg.SensorExecutionData:
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return tercul_changes.evaluate_tick(context)

        yield evaluate


def _selection(result: dg.SensorExecutionData) -> list[list[str]]:
    return [sorted(k.to_user_string() for k in r.asset_selection or []) for r in result.run_requests or []]


def _sql(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))


@pytest.mark.services
def test_the_sensor_requests_nothing_while_idle_and_the_changed_types_after_changes(tercul_pg, tick):
    first = tick(None)
    assert not first.run_requests and "first check" in (first.skip_message or "")
    marks = json.loads(first.cursor or "")
    assert set(marks) == {
        "authors",
        "works",
        "translations",
        "books",
        "publishers",
        "tags",
        "categories",
        "edges",
    }
    assert marks["works"]["count"] > 0 and marks["works"]["updated_at"]

    cursor = first.cursor
    for _ in range(3):  # idle: nothing, however often it looks
        idle = tick(cursor)
        assert not idle.run_requests and idle.skip_message == "no table changed"
        assert idle.cursor == cursor

    changes = [
        # an update: the Author objects are rewritten whole, no reference list changes
        ("UPDATE authors SET name = 'Renamed', updated_at = now() WHERE id = 2", ["Author"]),
        # a GORM soft delete (updated_at untouched) of a passage parent
        (
            "UPDATE translations SET deleted_at = now() WHERE id = 3",
            ["Translation", EDGES_ASSET, PASSAGES_ASSET],
        ),
        # a hard delete: only the count moves
        ("DELETE FROM publishers WHERE id = 4", ["Publisher", EDGES_ASSET]),
        # an edge removed outright
        ("DELETE FROM edges WHERE id = 5", [EDGES_ASSET]),
        # an insert into a table no relation points from
        (
            "INSERT INTO tags (name, slug, created_at, updated_at) VALUES ('new-tag', 'new', now(), now())",
            ["Tag", EDGES_ASSET],
        ),
    ]
    for statement, expected in changes:
        _sql(tercul_pg, statement)
        result = tick(cursor)
        assert _selection(result) == [sorted(expected)], statement
        [request] = result.run_requests or []
        # The checks each step reports itself; not the parity checks (whole collections).
        assert sorted(k.to_user_string() for k in request.asset_check_keys or []) == sorted(
            f"{a}:{c}" for a in expected for c in (CHECK_NAME, VECTOR_CHECK)
        )
        assert request.tags[MODE_TAG] == "incremental"
        assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == (
            jobs.ALL_SHARDS_TAGS[RANGE_START_TAG],
            jobs.ALL_SHARDS_TAGS[RANGE_END_TAG],
        )
        assert request.tags[jobs.TRIGGER_TAG] == SENSOR_NAME and request.tags[CHANGED_TAG]
        cursor = result.cursor
        assert not tick(cursor).run_requests  # once seen, idle again

    # Two tables in one interval: one run for both.
    _sql(
        tercul_pg,
        "UPDATE works SET title = 'x', updated_at = now() WHERE id = 6",
        "UPDATE categories SET deleted_at = now() WHERE id = 7",
    )
    both = tick(cursor)
    assert _selection(both) == [["Category", "Work", EDGES_ASSET, PASSAGES_ASSET]]
    assert (both.run_requests or [])[0].tags[CHANGED_TAG] == "categories,works"


@pytest.mark.services
def test_a_burst_of_1000_updates_between_two_checks_is_one_run(tercul_pg, tick):
    cursor = tick(None).cursor
    with tercul_pg.connect() as conn:
        ids = list(conn.execute(sa.text("SELECT id FROM works ORDER BY id")).scalars())
    assert ids
    for n in range(1_000):  # 1,000 updates, each its own transaction, as Tercul's backend would commit them
        _sql(
            tercul_pg,
            f"UPDATE works SET title = 'burst {n}', updated_at = now() WHERE id = {ids[n % len(ids)]}",
        )
    result = tick(cursor)
    assert _selection(result) == [["Work", PASSAGES_ASSET]]  # updates only: no edges
    # The same check evaluated again asks for the same run key: Dagster launches it once.
    again = tick(cursor)
    assert [r.run_key for r in again.run_requests or []] == [r.run_key for r in result.run_requests or []]
    # From the new cursor, nothing until the next change.
    assert not tick(result.cursor).run_requests


# --- a rows-only run, in process -------------------------------------------------------------------------


@pytest.mark.services
def test_a_rows_run_syncs_exactly_the_chosen_rows_and_moves_no_cursor(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 300, seed=5)
    work = entity("Work")
    with dg.instance_for_test() as instance:
        run_sync(pg_database, weaviate_server_proc, selection=["Work"], instance=instance)
        with engine.connect() as conn:
            a, b, c, d, e = conn.execute(
                sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id LIMIT 5")
            ).scalars()
        # Changes no cursor sees (updated_at and deleted_at left old): only a rows run brings them over.
        _sql(
            engine,
            f"UPDATE works SET title = 'chosen ' || id WHERE id IN ({a}, {b}, {e})",
            f"UPDATE works SET deleted_at = '2000-01-01' WHERE id = {c}",
            f"DELETE FROM edges WHERE source_table = 'works' AND source_id = {d}",
            f"DELETE FROM works WHERE id = {d}",
        )
        chosen = {"ops": {"Work": {"config": {"ids": [a, b, c, d, 10**9]}}}}
        result = run_sync(
            pg_database, weaviate_server_proc, selection=["Work"], run_config=chosen, instance=instance
        )
        meta = metadata(result, "Work")
        assert (meta["mode"], meta["rows_changed"], meta["objects_written"], meta["objects_deleted"]) == (
            "ids",
            5,
            2,
            2,
        )
        assert meta["cursor_after"] == meta["cursor_before"]
        assert meta["orphan_sweep"] is False

        works = weaviate_client.collections.use(work.collection)
        title = {i: works.query.fetch_object_by_id(object_uuid("Work", i)) for i in (a, b, c, d, e)}
        assert title[a].properties["title"] == f"chosen {a}" and title[b].properties["title"] == f"chosen {b}"
        assert title[c] is None and title[d] is None
        assert title[e].properties["title"] != f"chosen {e}"  # not chosen: left for the nightly sync

        both = {"ops": {"Work": {"config": {"ids": [a], "mode": "full"}}}}
        failed = run_sync(
            pg_database,
            weaviate_server_proc,
            selection=["Work"],
            run_config=both,
            instance=instance,
            raise_on_error=False,
        )
        assert not failed.success
    engine.dispose()
