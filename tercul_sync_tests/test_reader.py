"""The keyset reader, on an embedded SQLite database (pure logic, no services)."""

from __future__ import annotations

import sqlalchemy as sa
from tercul_sync.registry import RELATIONS, entity

from tercul_sync import demo_data, source


def _engine(tmp_path) -> sa.Engine:
    engine = source.make_engine(f"sqlite:///{tmp_path / 't.db'}")
    demo_data.generate(engine, 1_200, seed=1)
    return engine


def test_shards_partition_the_live_rows_exactly(tmp_path):
    engine = _engine(tmp_path)
    work = entity("Work")
    with engine.connect() as conn:
        live = set(conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL")).scalars())
        deleted = set(conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NOT NULL")).scalars())
    assert deleted, "the demo data should hold soft-deleted rows"
    seen: list[int] = []
    for k in range(3):
        for page in source.iter_live_pages(engine, work, source.Shard(k, 3), page_size=7):
            assert len(page) <= 7
            ids = [r["id"] for r in page]
            assert ids == sorted(ids) and all(i % 3 == k for i in ids)
            seen.extend(ids)
    assert sorted(seen) == sorted(live)  # every live row once, no soft-deleted row


def test_pages_are_keyset_not_offset(tmp_path):
    sql = str(
        source.select_live_page(entity("Work"), source.Shard(1, 4), 100, 50).compile(
            compile_kwargs={"literal_binds": True}
        )
    )
    assert "OFFSET" not in sql.upper()
    assert "works.id > 100" in sql and "% 4" in sql and "deleted_at IS NULL" in sql


def test_live_edges_leave_out_dead_targets(tmp_path):
    engine = _engine(tmp_path)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM edges"))
        conn.execute(sa.text("UPDATE authors SET deleted_at = NULL WHERE id IN (1, 2)"))
        conn.execute(sa.text("UPDATE authors SET deleted_at = '2024-01-01 00:00:00' WHERE id = 2"))
        now = "'2024-01-01 00:00:00'"
        for eid, (tid, deleted) in enumerate([(1, None), (2, None), (99999, None), (1, now)], start=1):
            conn.execute(
                sa.text(
                    "INSERT INTO edges (id, created_at, updated_at, deleted_at, "
                    "source_table, source_id, target_table, target_id, relation) "
                    f"VALUES ({eid}, {now}, {now}, {deleted or 'NULL'}, 'works', 5, 'authors', {tid}, 'authors')"
                )
            )
    rel = next(r for r in RELATIONS if r.name == "authors")
    assert source.live_edges_from(engine, rel, [5]) == {5: [(1, 1)]}


def test_safe_url_hides_the_password():
    assert "s3cret" not in source.safe_url("postgresql://tercul:s3cret@db:5432/tercul")
