"""Full sync of every entity type into a real Weaviate, from a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import sqlalchemy as sa
from tercul_sync.registry import ENTITIES, entity, object_uuid
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import MetadataQuery

from tercul_sync import demo_data, source, weaviate_io
from tercul_sync_tests.helpers import expected_objects, metadata, run_sync, stored_objects

ROWS = 10_000


def _generate(url: str, rows: int = ROWS) -> sa.Engine:
    engine = source.make_engine(url)
    demo_data.generate(engine, rows, seed=11)
    return engine


def test_full_sync_copies_every_live_row_with_every_property(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = _generate(pg_database)
    result = run_sync(pg_database, weaviate_server_proc)
    assert result.success

    total = 0
    for e in ENTITIES:
        expected = expected_objects(engine, e)
        stored = stored_objects(weaviate_client, e)
        total += len(expected)
        assert len(stored) == len(expected), e.collection
        for row_id, props in expected.items():
            assert stored[object_uuid(e.collection, row_id)] == props, f"{e.collection} {row_id}"
        md = metadata(result, e.collection)
        assert (md["rows_read"], md["objects_written"], md["objects_failed"]) == (
            len(expected),
            len(expected),
            0,
        )
        assert md["weaviate_object_count"] == len(expected)
    assert total > 9_000  # 10,000 rows less the soft-deleted ones


def test_second_full_sync_changes_nothing_and_duplicates_nothing(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = _generate(pg_database, 3_000)
    run_sync(pg_database, weaviate_server_proc)
    work = weaviate_client.collections.use("Work")
    before = {
        str(o.uuid): o.metadata.last_update_time
        for o in work.iterator(return_metadata=MetadataQuery(last_update_time=True))
    }

    again = run_sync(pg_database, weaviate_server_proc)
    for e in ENTITIES:
        md = metadata(again, e.collection)
        assert md["objects_written"] == 0 and md["objects_unchanged"] == md["rows_read"], e.collection
    after = {
        str(o.uuid): o.metadata.last_update_time
        for o in work.iterator(return_metadata=MetadataQuery(last_update_time=True))
    }
    assert after == before  # not rewritten at all

    forced = run_sync(
        pg_database,
        weaviate_server_proc,
        run_config={"ops": {e.collection: {"config": {"force": True}} for e in ENTITIES}},
    )
    for e in ENTITIES:
        live = len(expected_objects(engine, e))
        assert metadata(forced, e.collection)["objects_written"] == live
        assert len(stored_objects(weaviate_client, e)) == live  # replaced, not duplicated


def test_soft_deleted_and_removed_rows_lose_their_objects(pg_database, weaviate_server_proc, weaviate_client):
    engine = _generate(pg_database, 1_000)
    run_sync(pg_database, weaviate_server_proc, selection=["Tag"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tags SET deleted_at = now() WHERE id IN (1, 2)"))
        conn.execute(sa.text("DELETE FROM tags WHERE id IN (3, 4)"))
    result = run_sync(pg_database, weaviate_server_proc, selection=["Tag"])
    stored = stored_objects(weaviate_client, entity("Tag"))
    assert not {object_uuid("Tag", i) for i in (1, 2, 3, 4)} & set(stored)
    assert len(stored) == len(expected_objects(engine, entity("Tag")))
    assert metadata(result, "Tag")["objects_deleted"] >= 2  # some of 1..4 may have been soft-deleted already


def test_rejected_row_is_reported_and_everything_else_lands(tmp_path, weaviate_server_proc, weaviate_client):
    # SQLite lets a column declared INTEGER hold text: Weaviate refuses it as an int property.
    url = f"sqlite:///{tmp_path / 'messy.db'}"
    engine = _generate(url, 2_000)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE works SET published_year = 'MCMV', deleted_at = NULL WHERE id = 17"))
    reports = tmp_path / "reports"
    result = run_sync(url, weaviate_server_proc, selection=["Work"], tmp_dir=str(reports), batch_size=50)
    assert result.success  # one failure in ~600 rows is under the default 1% threshold

    md = metadata(result, "Work")
    assert md["objects_failed"] == 1
    assert md["batches"] >= md["rows_read"] / 50  # the batch size setting is what the writer used
    assert md["failure_sample"][0]["id"] == 17
    assert "published_year" in md["failure_sample"][0]["error"]
    lines = [json.loads(x) for x in Path(md["failure_report"]).read_text().splitlines()]
    assert [(x["id"], x["asset"]) for x in lines] == [(17, "Work")]

    expected = expected_objects(engine, entity("Work"))
    stored = stored_objects(weaviate_client, entity("Work"))
    assert set(stored) == {
        object_uuid("Work", i) for i in expected if i != 17
    }  # the rest of its batch and all others landed

    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed, c.severity.value) for c in checks] == [
        ("no_failed_objects", False, "WARN")
    ]


def test_failures_above_threshold_fail_the_step(tmp_path, weaviate_server_proc, weaviate_client):
    url = f"sqlite:///{tmp_path / 'messy.db'}"
    engine = _generate(url, 2_000)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE works SET published_year = 'n/a' WHERE id % 10 = 0"))
    result = run_sync(
        url, weaviate_server_proc, selection=["Work"], raise_on_error=False, max_failure_rate=0.05
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "above TERCUL_SYNC_MAX_FAILURE_RATE" in failure.description
    assert failure.metadata["objects_failed"].value > 0
    # the good rows landed all the same
    live_good = [i for i in expected_objects(engine, entity("Work")) if i % 10]
    stored = stored_objects(weaviate_client, entity("Work"))
    assert {object_uuid("Work", i) for i in live_good} <= set(stored)


def test_incompatible_schema_fails_with_the_property_named(tmp_path, weaviate_server_proc, weaviate_client):
    weaviate_client.collections.create("Tag", properties=[Property(name="name", data_type=DataType.INT)])
    url = f"sqlite:///{tmp_path / 'tags.db'}"
    _generate(url, 300)
    result = run_sync(url, weaviate_server_proc, selection=["Tag"], raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()  # one attempt: a schema conflict is not retried
    description = failure.step_failure_data.user_failure_data.description
    assert "Tag.name is int in Weaviate, the registry needs text" in description


def test_a_brief_outage_is_retried_and_everything_lands(
    tmp_path, weaviate_server_proc, weaviate_client, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    engine = _generate(url, 2_000)
    pid, real_send, calls = weaviate_server_proc.process.pid, weaviate_io.send_objects, []

    def send_during_outage(*args, **kwargs):  # the server stops answering for two seconds, then comes back
        calls.append(1)
        if len(calls) == 2:
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(2.0, os.kill, (pid, signal.SIGCONT)).start()
        return real_send(*args, **kwargs)

    monkeypatch.setattr(weaviate_io, "send_objects", send_during_outage)
    try:
        result = run_sync(
            url,
            weaviate_server_proc,
            selection=["Work"],
            batch_size=100,
            weaviate_timeout=1,
            retry_attempts=6,
            retries=0,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    md = metadata(result, "Work")
    assert md["retried_batches"] >= 1 and md["objects_failed"] == 0
    assert set(stored_objects(weaviate_client, entity("Work"))) == {
        object_uuid("Work", i) for i in expected_objects(engine, entity("Work"))
    }
