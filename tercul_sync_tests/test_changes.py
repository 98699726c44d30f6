"""What the cursors' queries read back (``changes.py``), on SQLite: no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.changes import Cursor, changed_edges, changed_target_ids
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
    shard = [reading.Shard(0, 1)]
    # The cursor stopped at the 10th row of the bulk change (by id): the rest are still ahead of it.
    after = changed_edges(engine, shard, Cursor(BULK, edges[9]), timedelta(0))
    assert [r["id"] for r in after] == edges[10:]
    targets = changed_target_ids(engine, entity("Author"), Cursor(BULK, authors[9]), timedelta(0))
    assert sorted(i for i, _, _ in targets) == authors[10:]
    # At the last row, nothing is left to read.
    assert changed_edges(engine, shard, Cursor(BULK, edges[-1]), timedelta(0)) == []


def test_an_overlap_reads_again_every_row_changed_inside_it(bulk_changed):
    engine, edges, authors = bulk_changed
    again = changed_edges(engine, [reading.Shard(0, 1)], Cursor(BULK, edges[-1]), timedelta(seconds=1))
    assert [r["id"] for r in again] == edges
    targets = changed_target_ids(engine, entity("Author"), Cursor(BULK, authors[-1]), timedelta(seconds=1))
    assert sorted(i for i, _, _ in targets) == authors
