"""Incremental sync and delete propagation, against real PostgreSQL and Weaviate."""

from __future__ import annotations

import os
import random
import signal
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.registry import ENTITIES, EntityType, entity, object_uuid
from tercul_sync_tests.helpers import (
    SHARDS,
    PausingWeaviate,
    assert_objects_match,
    assert_references_match,
    expected_objects,
    metadata,
    run_sync,
)

pytestmark = pytest.mark.services

EDGE_KINDS = [
    ("works", "authors", "authors"),
    ("works", "tags", "tags"),
    ("translations", "translation_of", "works"),
    ("books", "contains", "works"),
    ("categories", "parent", "categories"),
    ("works", "inspired_by", "works"),  # a relation Tercul does not use
]


def _ids(conn, table: str, where: str = "TRUE") -> list[int]:
    return list(conn.execute(sa.text(f"SELECT id FROM {table} WHERE {where} ORDER BY id")).scalars())


def _insert_row(conn, rng: random.Random, e: EntityType) -> None:
    counts = {x.collection: 50 for x in ENTITIES}
    row = demo_data._row(rng, e, rng.randint(2, 50), counts)
    row.pop("id")
    row.update(deleted_at=None, created_at=sa.func.now(), updated_at=sa.func.now())
    for c in e.columns:
        if c.unique and row.get(c.name) is not None:
            row[c.name] = f"{c.name}-{rng.getrandbits(48)}"[: c.length or 64]
    conn.execute(reading.table_for(e).insert().values(**row))


def _random_round(engine: sa.Engine, rng: random.Random) -> None:
    """One round of what Tercul's backend does: inserts, updates, soft and hard deletes, edge changes."""
    with engine.begin() as conn:
        for e in rng.sample(list(ENTITIES), 3):
            t = e.table
            live = _ids(conn, t, "deleted_at IS NULL")
            for _ in range(rng.randint(0, 3)):
                _insert_row(conn, rng, e)
            for row_id in rng.sample(live, min(len(live), rng.randint(0, 4))):
                column = next(c.name for c in e.columns if c.kind.value == "text")
                conn.execute(
                    sa.text(f"UPDATE {t} SET {column} = :v, updated_at = now() WHERE id = :i"),
                    {"v": f"edit {rng.random()}", "i": row_id},
                )
            for row_id in rng.sample(
                live, min(len(live), rng.randint(0, 2))
            ):  # GORM soft delete: updated_at untouched
                conn.execute(sa.text(f"UPDATE {t} SET deleted_at = now() WHERE id = :i"), {"i": row_id})
            for row_id in rng.sample(live, min(len(live), rng.randint(0, 2))):  # hard delete
                conn.execute(sa.text(f"DELETE FROM {t} WHERE id = :i"), {"i": row_id})
            dead = _ids(conn, t, "deleted_at IS NOT NULL")
            for row_id in rng.sample(dead, min(len(dead), rng.randint(0, 1))):  # restore
                conn.execute(
                    sa.text(f"UPDATE {t} SET deleted_at = NULL, updated_at = now() WHERE id = :i"),
                    {"i": row_id},
                )
        edges = _ids(conn, "edges", "deleted_at IS NULL")
        for _ in range(rng.randint(2, 8)):
            src, rel, tgt = rng.choice(EDGE_KINDS)
            sources, targets = _ids(conn, src), _ids(conn, tgt)
            target = rng.choice(targets) if rng.random() > 0.1 else max(targets) + 77  # sometimes dangling
            conn.execute(
                sa.text(
                    "INSERT INTO edges (created_at, updated_at, source_table, source_id, target_table, "
                    "target_id, relation) VALUES (now(), now(), :s, :si, :t, :ti, :r)"
                ),
                {"s": src, "si": rng.choice(sources), "t": tgt, "ti": target, "r": rel},
            )
        for edge_id in rng.sample(edges, 3):
            conn.execute(sa.text("UPDATE edges SET deleted_at = now() WHERE id = :i"), {"i": edge_id})
        for edge_id in rng.sample(edges, 3):
            conn.execute(sa.text("DELETE FROM edges WHERE id = :i"), {"i": edge_id})
        for edge_id in rng.sample(edges, 2):  # repoint an edge
            conn.execute(
                sa.text("UPDATE edges SET target_id = target_id + 1, updated_at = now() WHERE id = :i"),
                {"i": edge_id},
            )


def test_random_changes_converge_after_each_incremental_sync(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_200, seed=21)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(pg_database, weaviate_server_proc, instance=instance)
    rng = random.Random(1234)
    totals = {"written": 0, "deleted": 0, "unchanged": 0}
    for round_no in range(20):
        _random_round(engine, rng)
        result = run_sync(
            pg_database, weaviate_server_proc, instance=instance, mode="incremental", overlap_seconds=0
        )
        assert result.success, round_no
        for e in ENTITIES:
            md = metadata(result, e.collection)
            assert md["mode"] == "incremental"
            totals["written"] += md["objects_written"]
            totals["deleted"] += md["objects_deleted"]
            totals["unchanged"] += md["objects_unchanged"]
            # cost follows the change: far fewer rows read than the table holds
            assert md["rows_read"] <= 60, (round_no, e.collection, md["rows_read"])
        assert_objects_match(engine, weaviate_client)
        assert_references_match(engine, weaviate_server_proc)
    assert totals["written"] > 20 and totals["deleted"] > 10


def _shard_max_updated(engine: sa.Engine, table: str, shard: int) -> object:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT max(updated_at) FROM {table} WHERE id % {SHARDS} = {shard}")
        ).scalar_one()


def test_late_commit_inside_the_overlap_window_is_synced(pg_database, weaviate_server_proc, weaviate_client):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 400, seed=2)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(pg_database, weaviate_server_proc, selection=["Tag"], instance=instance)
    newest = _shard_max_updated(engine, "tags", 0)
    late, too_late = 100_000, 100_000 + SHARDS  # both in shard 0
    with engine.begin() as conn:
        for row_id, age in ((late, timedelta(seconds=30)), (too_late, timedelta(hours=2))):
            conn.execute(
                sa.text("INSERT INTO tags (id, created_at, updated_at, name) VALUES (:i, :t, :t, :n)"),
                {"i": row_id, "t": newest - age, "n": f"late-{row_id}"},
            )
    result = run_sync(
        pg_database,
        weaviate_server_proc,
        selection=["Tag"],
        instance=instance,
        mode="incremental",
        overlap_seconds=60,
    )
    tags = weaviate_client.collections.use("Tag")
    synced = tags.query.fetch_object_by_id(object_uuid("Tag", late))
    assert synced is not None and synced.properties["name"] == f"late-{late}"
    # Older than the window: documented as the nightly full sync's job, and it does it.
    assert tags.query.fetch_object_by_id(object_uuid("Tag", too_late)) is None
    cursor = metadata(result, "Tag")["cursor_after"]["shard-0"]
    assert datetime.fromisoformat(cursor["updated_at"]) == newest  # never moved back by a late row
    run_sync(pg_database, weaviate_server_proc, selection=["Tag"], instance=instance)
    synced = tags.query.fetch_object_by_id(object_uuid("Tag", too_late))
    assert synced is not None and synced.properties["name"] == f"late-{too_late}"


def test_unchanged_row_is_not_rewritten(pg_database, weaviate_server_proc, weaviate_client):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 400, seed=3)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(pg_database, weaviate_server_proc, selection=["Author"], instance=instance)
    with engine.begin() as conn:
        row_id = conn.execute(sa.text("SELECT min(id) FROM authors WHERE deleted_at IS NULL")).scalar_one()
        conn.execute(
            sa.text("UPDATE authors SET name = 'Anna', updated_at = now() WHERE id = :i"), {"i": row_id}
        )
    uid = object_uuid("Author", row_id)
    authors = weaviate_client.collections.use("Author")

    def sync() -> dict:
        result = run_sync(
            pg_database,
            weaviate_server_proc,
            selection=["Author"],
            instance=instance,
            mode="incremental",
            overlap_seconds=3600,
        )
        return metadata(result, "Author")

    changed = sync()
    assert changed["objects_written"] == 1  # the edited row; the others in the window are unchanged
    assert changed["objects_unchanged"] == changed["rows_read"] - 1
    written_at = authors.query.fetch_object_by_id(uid).metadata.last_update_time
    # Run again: the row is inside the overlap window, so it is read again, but nothing it stores changed.
    again = sync()
    assert again["rows_changed"] >= 1
    assert (again["objects_written"], again["objects_unchanged"]) == (0, again["rows_read"])
    assert authors.query.fetch_object_by_id(uid).metadata.last_update_time == written_at
    assert authors.query.fetch_object_by_id(uid).properties["name"] == "Anna"


def test_sync_broken_half_way_keeps_its_cursor_and_the_next_run_completes(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_000, seed=4)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(pg_database, weaviate_server_proc, selection=["Work"], instance=instance)
    first = metadata(
        run_sync(
            pg_database, weaviate_server_proc, selection=["Work"], instance=instance, mode="incremental"
        ),
        "Work",
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE works SET title = title || ' (rev. 2)', updated_at = now() WHERE deleted_at IS NULL"
            )
        )

    # The server stops answering once two batches have landed, and stays frozen for the rest of the run.
    freeze = PausingWeaviate(
        url=weaviate_server_proc.url,
        grpc_port=weaviate_server_proc.grpc_port,
        timeout_seconds=3,
        server_pid=weaviate_server_proc.process.pid,
        pause_at_batch=2,
        pause_before_send=False,
    )
    try:
        broken = run_sync(
            pg_database,
            weaviate_server_proc,
            selection=["Work"],
            instance=instance,
            mode="incremental",
            raise_on_error=False,
            retries=0,
            weaviate=freeze,
            retry_attempts=2,
            batch_size=50,
        )
    finally:
        os.kill(weaviate_server_proc.process.pid, signal.SIGCONT)
    assert not broken.success
    assert not broken.asset_materializations_for_node("Work")  # no materialization, so no cursor moved
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("Work")), limit=1
    ).records
    assert records[0].asset_materialization.metadata["cursor_after"].value == first["cursor_after"]

    revised = {
        o.properties["source_id"]
        for o in weaviate_client.collections.use("Work").iterator(return_properties=["source_id", "title"])
        if str(o.properties.get("title", "")).endswith(" (rev. 2)")
    }
    live = len(expected_objects(engine, entity("Work")))
    assert 0 < len(revised) < live  # two batches landed before the break, the rest did not

    done = metadata(
        run_sync(
            pg_database, weaviate_server_proc, selection=["Work"], instance=instance, mode="incremental"
        ),
        "Work",
    )
    # what landed before the break is skipped, exactly; the rest is written
    assert (done["objects_unchanged"], done["objects_written"]) == (len(revised), live - len(revised))
    assert done["rows_read"] == live
    assert_objects_match(engine, weaviate_client, (entity("Work"),))


def test_a_row_weaviate_refuses_is_reported_without_stalling_the_cursor(
    tmp_path, weaviate_server_proc, weaviate_client
):
    url = f"sqlite:///{tmp_path / 'messy.db'}"
    engine = reading.make_engine(url)
    demo_data.generate(engine, 600, seed=12)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(url, weaviate_server_proc, selection=["Work"], instance=instance)
    works = reading.table_for(entity("Work"))
    now = datetime.now(UTC)
    with engine.begin() as conn:  # SQLite keeps text in an INTEGER column: Weaviate refuses it
        conn.execute(
            works.update()
            .where(works.c.id == 17)
            .values(published_year="MCMV", deleted_at=None, updated_at=now)
        )
        conn.execute(
            works.update()
            .where(works.c.id == 21)
            .values(title="Fixed title", deleted_at=None, updated_at=now)
        )
    result = run_sync(
        url,
        weaviate_server_proc,
        selection=["Work"],
        instance=instance,
        mode="incremental",
        overlap_seconds=0,
    )
    md = metadata(result, "Work")
    assert (md["objects_failed"], md["failure_sample"][0]["id"]) == (1, 17)
    shard = f"shard-{17 % SHARDS}"
    assert md["cursor_after"][shard] != md["cursor_before"][shard]  # reported, and the shard moved on
    assert (
        weaviate_client.collections.use("Work")
        .query.fetch_object_by_id(object_uuid("Work", 21))
        .properties["title"]
        == "Fixed title"
    )
    again = metadata(
        run_sync(
            url,
            weaviate_server_proc,
            selection=["Work"],
            instance=instance,
            mode="incremental",
            overlap_seconds=0,
        ),
        "Work",
    )
    assert again["rows_read"] == 0  # not re-read on every run; the nightly full sync tries it again


def test_sources_of_targets_removed_outright_are_rewritten_without_the_count_search(
    pg_database, weaviate_server_proc, weaviate_client
):
    """Authors deleted outright leave their edges behind; the Author step names them, and a later
    incremental edges step (another run) rewrites the works that pointed at them directly."""
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 600, seed=5)
    instance = dg.DagsterInstance.ephemeral()
    assert run_sync(pg_database, weaviate_server_proc, instance=instance).success
    with engine.begin() as conn:
        removed = list(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT a.id FROM authors a JOIN edges e ON e.target_id = a.id "
                    "AND e.target_table = 'authors' AND e.relation = 'authors' AND e.deleted_at IS NULL "
                    "JOIN works w ON w.id = e.source_id AND e.source_table = 'works' "
                    "AND w.deleted_at IS NULL "
                    "WHERE a.deleted_at IS NULL ORDER BY a.id LIMIT 3"
                )
            ).scalars()
        )
        conn.execute(sa.text("DELETE FROM authors WHERE id = ANY(:ids)"), {"ids": removed})
    assert len(removed) == 3
    authors = run_sync(
        pg_database, weaviate_server_proc, selection=["Author"], instance=instance, mode="incremental"
    )
    assert sorted(metadata(authors, "Author")["removed_ids"]) == removed
    result = run_sync(
        pg_database, weaviate_server_proc, selection=["edges"], instance=instance, mode="incremental"
    )
    md = metadata(result, "edges")
    # Found from the removed ids: the count check afterwards has nothing left to search for.
    assert md["reconciled_by_count_check"] == "none"
    assert md["removed_targets"] == 3
    assert md["sources_of_removed_targets"] >= 3
    assert_objects_match(engine, weaviate_client)
    assert_references_match(engine, weaviate_server_proc)
    # The next edges run starts after this one: those removals are not counted again.
    again = run_sync(
        pg_database, weaviate_server_proc, selection=["edges"], instance=instance, mode="incremental"
    )
    assert metadata(again, "edges")["removed_targets"] == 0
