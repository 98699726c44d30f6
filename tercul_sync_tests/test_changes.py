"""What the cursors' queries read back (``changes.py``), on SQLite: no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.changes import Cursor, changed_edges, changed_target_ids, soft_deleted_since
from tercul_sync.engine.registry import entity

pytestmark = pytest.mark.unit

BULK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # one UPDATE stamped many rows with this time


@pytest.fixture
def bulk_changed(tmp_path) -> tuple[sa.Engine, list[int], list[int]]:
    """A demo database where one statement changed 20 edges and 20 authors at the same instant;
    returns the engine and the ids of those edges and authors."""
    engine = reading.make_engine(f"sqlite:///{tmp_path / 't.db'}")
    demo_data.generate(engine, 300, seed=3)
    with engine.begin() as conn:
        edges = list(conn.execute(sa.text("SELECT id FROM edges ORDER BY id LIMIT 20")).scalars())
        authors = list(
            conn.execute(
                sa.text("SELECT id FROM authors WHERE deleted_at IS NULL ORDER BY id LIMIT 20")
            ).scalars()
        )
        for table, ids in ((reading.edges_table(), edges), (reading.table_for(entity("Author")), authors)):
            conn.execute(table.update().where(table.c.id.in_(ids)).values(updated_at=BULK))
    return engine, edges, authors


def test_without_an_overlap_rows_sharing_the_cursors_time_are_read_once(bulk_changed):
    engine, edges, authors = bulk_changed
    every = reading.Shard(0, 1)
    # The cursor stopped at the 10th row of the bulk change (by id): the rest are still ahead of it.
    after = changed_edges(engine, {"all": (every, Cursor(BULK, edges[9]))}, timedelta(0))["all"]
    assert [r["id"] for r in after] == edges[10:]
    targets = changed_target_ids(engine, entity("Author"), Cursor(BULK, authors[9]), timedelta(0))
    assert sorted(i for i, _, _ in targets) == authors[10:]
    # At the last row, nothing is left to read.
    assert changed_edges(engine, {"all": (every, Cursor(BULK, edges[-1]))}, timedelta(0)) == {"all": []}


def test_an_overlap_reads_again_every_row_changed_inside_it(bulk_changed):
    engine, edges, authors = bulk_changed
    scope = {"all": (reading.Shard(0, 1), Cursor(BULK, edges[-1]))}
    again = changed_edges(engine, scope, timedelta(seconds=1))["all"]
    assert [r["id"] for r in again] == edges
    targets = changed_target_ids(engine, entity("Author"), Cursor(BULK, authors[-1]), timedelta(seconds=1))
    assert sorted(i for i, _, _ in targets) == authors


def test_one_read_gives_each_shard_what_changed_after_its_own_cursor(bulk_changed):
    """Every shard's changes come from one query (one scan of the table); each shard still gets
    only its own rows after its own cursor, as if it had been read alone."""
    engine, edges, _ = bulk_changed
    with engine.begin() as conn:
        works = reading.table_for(entity("Work"))
        gone = list(conn.execute(sa.select(works.c.id).order_by(works.c.id).limit(12)).scalars())
        conn.execute(works.update().where(works.c.id.in_(gone[:6])).values(deleted_at=BULK))
        later = BULK + timedelta(hours=1)
        conn.execute(works.update().where(works.c.id.in_(gone[6:])).values(deleted_at=later))
    even, odd = reading.Shard(0, 2), reading.Shard(1, 2)
    scopes = {"even": (even, Cursor(BULK, edges[9], BULK)), "odd": (odd, Cursor(None, 0, None))}
    for name, rows in changed_edges(engine, scopes, timedelta(0)).items():
        shard, cursor = scopes[name]
        alone = changed_edges(engine, {name: (shard, cursor)}, timedelta(0))[name]
        assert rows == alone and all(shard.contains(r["source_id"]) for r in rows)
    deleted = soft_deleted_since(engine, entity("Work"), scopes, timedelta(0))
    # Even ids: only those deleted after the even cursor's deleted_at; odd ids: every soft delete.
    assert sorted(i for i, _ in deleted["even"]) == [i for i in gone[6:] if i % 2 == 0]
    assert {i for i in gone if i % 2 == 1} <= {i for i, _ in deleted["odd"]}
    assert all(i % 2 == 1 for i, _ in deleted["odd"])
