"""Full sync of every entity type into a real Weaviate, from a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import sqlalchemy as sa
from weaviate.classes.config import DataType, Property
from weaviate.classes.data import DataObject
from weaviate.classes.query import MetadataQuery

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.digests import DIGEST_PROPERTY
from tercul_sync.engine.registry import ENTITIES, SOURCE_ID_PROPERTY, entity, object_uuid
from tercul_sync_tests.helpers import PausingWeaviate, expected_objects, metadata, run_sync, stored_objects

pytestmark = pytest.mark.services

ROWS = 10_000


def _generate(url: str, rows: int = ROWS) -> sa.Engine:
    engine = reading.make_engine(url)
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
    _long_texts_are_searchable_not_filterable(engine, weaviate_client)


def _long_texts_are_searchable_not_filterable(engine: sa.Engine, client) -> None:
    """Texts cut into passages get no filterable index (docs/design.md, "Indexes"); BM25 still finds
    a work by a word of its body alone, and short texts stay filterable."""
    for e in (entity("Work"), entity("Translation")):
        indexes = {
            p.name: (p.index_filterable, p.index_searchable, p.index_range_filters)
            for p in client.collections.use(e.collection).config.get().properties
        }
        assert indexes["body"] == (False, True, False), e.collection
        assert indexes["title"] == (True, True, False), e.collection
        # Only the id ranges get a range index; digests, summed under a filter, get no index at all
        # (the re-run test below shows those sums still match).
        assert indexes[SOURCE_ID_PROPERTY] == (True, False, True), e.collection
        assert indexes["updated_at"] == (True, False, False), e.collection
        assert indexes[DIGEST_PROPERTY] == (False, False, False), e.collection
    with engine.connect() as conn:
        work_id, body, title = conn.execute(
            sa.text(
                "SELECT id, body, title FROM works "
                "WHERE deleted_at IS NULL AND body <> '' ORDER BY id LIMIT 1"
            )
        ).one()
    word = max((w for w in body.split() if w.isalpha() and w.lower() not in title.lower()), key=len)
    hits = client.collections.use("Work").query.bm25(word, query_properties=["body"], limit=1000).objects
    assert object_uuid("Work", work_id) in {str(o.uuid) for o in hits}, word


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
        # every range's digest matched: not one row was read (engine/digests.py)
        assert (md["objects_written"], md["rows_read"], md["digest_ranges_read"]) == (0, 0, 0), e.collection
        assert md["rows_matched_by_digest"] == reading.count_live(engine, e), e.collection
    assert metadata(again, "edges")["reconciled_by_count_check"] == "none"
    after = {
        str(o.uuid): o.metadata.last_update_time
        for o in work.iterator(return_metadata=MetadataQuery(last_update_time=True))
    }
    assert len(before) == len(expected_objects(engine, entity("Work")))
    assert after == before  # not rewritten at all

    forced = run_sync(
        pg_database,
        weaviate_server_proc,
        run_config={"ops": {e.collection: {"config": {"force": True}} for e in ENTITIES}},
    )
    for e in ENTITIES:
        live = len(expected_objects(engine, e))
        assert metadata(forced, e.collection)["objects_written"] == live
        assert metadata(forced, e.collection)["rows_matched_by_digest"] == 0  # forced: every row read
        assert len(stored_objects(weaviate_client, e)) == live  # replaced, not duplicated


def test_soft_deleted_and_removed_rows_lose_their_objects(pg_database, weaviate_server_proc, weaviate_client):
    engine = _generate(pg_database, 1_000)
    run_sync(pg_database, weaviate_server_proc, selection=["Tag"])
    had_objects = {
        i for i in (1, 2, 3, 4) if object_uuid("Tag", i) in stored_objects(weaviate_client, entity("Tag"))
    }
    assert had_objects, "the demo data should have some of tags 1..4 live"
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tags SET deleted_at = now() WHERE id IN (1, 2)"))
        conn.execute(sa.text("DELETE FROM tags WHERE id IN (3, 4)"))
    result = run_sync(pg_database, weaviate_server_proc, selection=["Tag"])
    stored = stored_objects(weaviate_client, entity("Tag"))
    assert not {object_uuid("Tag", i) for i in (1, 2, 3, 4)} & set(stored)
    assert len(stored) == len(expected_objects(engine, entity("Tag")))
    assert metadata(result, "Tag")["objects_deleted"] == len(had_objects)  # those of 1..4 that were live


def test_rejected_row_is_reported_and_everything_else_lands(tmp_path, weaviate_server_proc, weaviate_client):
    # SQLite lets a column declared INTEGER hold text: Weaviate refuses it as an int property.
    url = f"sqlite:///{tmp_path / 'messy.db'}"
    engine = _generate(url, 2_000)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE works SET published_year = 'MCMV', deleted_at = NULL WHERE id = 17"))
    result = run_sync(url, weaviate_server_proc, selection=["Work"], home=tmp_path / "home", batch_size=50)
    assert result.success  # one failure in ~600 rows is under the default 1% threshold

    md = metadata(result, "Work")
    assert md["objects_failed"] == 1
    assert md["batches"] >= md["rows_read"] / 50  # the batch size setting is what the writer used
    assert md["failure_sample"][0]["id"] == 17
    assert "published_year" in md["failure_sample"][0]["error"]
    report = Path(md["failure_report"])
    assert report.parent.parent == tmp_path / "home" / "reports"  # <home>/reports/<run id>/Work.jsonl
    assert report.name == "Work.jsonl" and report.parent.name == result.run_id
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(x["id"], x["asset"]) for x in lines] == [(17, "Work")]

    expected = expected_objects(engine, entity("Work"))
    stored = stored_objects(weaviate_client, entity("Work"))
    assert set(stored) == {
        object_uuid("Work", i) for i in expected if i != 17
    }  # the rest of its batch and all others landed

    checks = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_failed_objects"]
    assert [(c.passed, c.severity.value, c.metadata["objects_failed"].value) for c in checks] == [
        (False, "WARN", 1)
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


def test_a_brief_outage_is_retried_and_everything_lands(tmp_path, weaviate_server_proc, weaviate_client):
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    engine = _generate(url, 2_000)
    # The server stops answering just before the second batch, for two seconds, then comes back.
    outage = PausingWeaviate(
        url=weaviate_server_proc.url,
        grpc_port=weaviate_server_proc.grpc_port,
        timeout_seconds=1,
        server_pid=weaviate_server_proc.process.pid,
        pause_at_batch=2,
        resume_after_s=2.0,
    )
    try:
        result = run_sync(
            url,
            weaviate_server_proc,
            selection=["Work"],
            weaviate=outage,
            batch_size=100,
            retry_attempts=6,
            retries=0,
        )
    finally:
        os.kill(weaviate_server_proc.process.pid, signal.SIGCONT)
    md = metadata(result, "Work")
    assert md["retried_batches"] >= 1 and md["objects_failed"] == 0
    assert md["objects_written"] == md["rows_read"] == len(expected_objects(engine, entity("Work")))
    assert set(stored_objects(weaviate_client, entity("Work"))) == {
        object_uuid("Work", i) for i in expected_objects(engine, entity("Work"))
    }


def test_existing_uuids_finds_exactly_the_objects_that_exist(weaviate_client, monkeypatch):
    from tercul_sync.engine import weaviate_client as wc

    weaviate_client.collections.create("Tag", properties=[Property(name="name", data_type=DataType.TEXT)])
    present = [object_uuid("Tag", i) for i in range(1, 8)]
    weaviate_client.collections.use("Tag").data.insert_many(
        [DataObject(properties={"name": f"t{i}"}, uuid=u) for i, u in enumerate(present)]
    )
    missing = [object_uuid("Tag", i) for i in range(100, 103)]
    monkeypatch.setattr(wc, "ID_CHUNK", 4)  # chunks that are whole, short, and both
    assert wc.existing_uuids(weaviate_client, "Tag", present) == set(present)
    assert wc.existing_uuids(weaviate_client, "Tag", [*present, *missing]) == set(present)
    assert wc.existing_uuids(weaviate_client, "Tag", missing) == set()
