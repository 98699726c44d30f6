"""The keyset reader and the shards, on SQLite (a file, or in memory): no server."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.reading import Shard, in_shards, shards_clause
from tercul_sync.engine.registry import RELATIONS, entity

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    engine = reading.make_engine(f"sqlite:///{tmp_path_factory.mktemp('reader') / 't.db'}")
    demo_data.generate(engine, 1_200, seed=1)
    return engine


def test_shards_partition_the_live_rows_exactly(demo_engine):
    work = entity("Work")
    with demo_engine.connect() as conn:
        live = set(conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL")).scalars())
        deleted = set(conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NOT NULL")).scalars())
    assert deleted, "the demo data should hold soft-deleted rows"
    seen: list[int] = []
    for k in range(3):
        for page in reading.iter_live_pages(demo_engine, work, [Shard(k, 3)], page_size=7):
            assert len(page) <= 7
            ids = [r["id"] for r in page]
            assert ids == sorted(ids) and all(i % 3 == k for i in ids)
            seen.extend(ids)
    assert sorted(seen) == sorted(live)  # every live row once, no soft-deleted row
    assert reading.count_live(demo_engine, work) == len(live)
    assert list(reading.live_id_set(demo_engine, work, [Shard(1, 3)])) == sorted(
        i for i in live if i % 3 == 1
    )


def test_a_page_size_below_one_is_refused(demo_engine):
    with pytest.raises(ValueError, match="page size must be at least 1"):
        next(reading.iter_live_pages(demo_engine, entity("Work"), [Shard(0, 1)], page_size=0))


def test_pages_are_keyset_not_offset():
    sql = str(
        reading.select_live_page(entity("Work"), [Shard(1, 4)], 100, 50).compile(
            compile_kwargs={"literal_binds": True}
        )
    )
    assert "OFFSET" not in sql.upper()
    assert "works.id > 100" in sql and "% 4" in sql and "deleted_at IS NULL" in sql


def test_fetch_live_rows_returns_only_live_rows_among_the_ids(demo_engine):
    with demo_engine.connect() as conn:
        dead = conn.execute(sa.text("SELECT min(id) FROM works WHERE deleted_at IS NOT NULL")).scalar_one()
        live = conn.execute(sa.text("SELECT min(id) FROM works WHERE deleted_at IS NULL")).scalar_one()
    rows = reading.fetch_live_rows(demo_engine, entity("Work"), [dead, live, live, 10**9])
    assert [r["id"] for r in rows] == [live]
    assert reading.fetch_live_rows(demo_engine, entity("Work"), []) == []


def test_live_edges_leave_out_dead_targets(tmp_path):
    engine = reading.make_engine(f"sqlite:///{tmp_path / 't.db'}")
    demo_data.generate(engine, 300, seed=1)
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
                    f"VALUES ({eid}, {now}, {now}, {deleted or 'NULL'}, "
                    f"'works', 5, 'authors', {tid}, 'authors')"
                )
            )
        conn.execute(sa.text("UPDATE tags SET deleted_at = NULL WHERE id = 3"))
        conn.execute(
            sa.text(
                "INSERT INTO edges (id, created_at, updated_at, deleted_at, "
                "source_table, source_id, target_table, target_id, relation) "
                f"VALUES (9, {now}, {now}, NULL, 'works', 5, 'tags', 3, 'tags'), "
                f"(10, {now}, {now}, NULL, 'works', 6, 'authors', 1, 'authors')"
            )
        )
    authors, tags = (next(r for r in RELATIONS if r.name == n) for n in ("authors", "tags"))
    # One query for both relations of works, each edge under its own relation.
    both = reading.live_edges_from(engine, [authors, tags], [5])
    assert both == {"authors": {5: [(1, 1)]}, "tags": {5: [(9, 3)]}}
    assert reading.live_edges_from(engine, [authors], [5, 6]) == {"authors": {5: [(1, 1)], 6: [(10, 1)]}}
    assert reading.live_edges_from(engine, [authors, tags], []) == {"authors": {}, "tags": {}}


def test_safe_url_hides_the_password():
    shown = reading.safe_url("postgresql://tercul:s3cret@db:5432/tercul")
    assert (
        "s3cret" not in shown
        and shown.startswith("postgresql://tercul:")
        and shown.endswith("@db:5432/tercul")
    )


def test_shard_contains():
    assert Shard(0, 1).contains(12345)  # one shard holds everything
    assert Shard(2, 4).contains(6) and not Shard(2, 4).contains(7)
    assert in_shards(7, [])  # no shards: no restriction
    assert in_shards(7, [Shard(0, 4), Shard(3, 4)]) and not in_shards(5, [Shard(0, 4), Shard(3, 4)])


SHARD_SETS = [
    [],
    [Shard(0, 1)],
    *([Shard(i, n)] for n in (2, 3, 4, 7) for i in range(n)),
    [Shard(0, 4), Shard(3, 4)],
    [Shard(1, 8), Shard(2, 8), Shard(5, 8)],
    [Shard(i, 5) for i in range(5)],
]


def test_python_and_sql_agree_on_every_shard_set():
    """``in_shards``/``Shard.contains`` (Python) and ``shards_clause`` (SQL) pick the same ids."""
    engine = sa.create_engine("sqlite://")
    md = sa.MetaData()
    t = sa.Table("rows", md, sa.Column("id", sa.BigInteger, primary_key=True))
    md.create_all(engine)
    ids = [*range(0, 300), 2**31 - 1, 2**31, 2**40 + 3]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i} for i in ids])
        for shards in SHARD_SETS:
            chosen = set(conn.execute(sa.select(t.c.id).where(shards_clause(t.c.id, shards))).scalars())
            assert chosen == {i for i in ids if in_shards(i, shards)}, shards
            assert chosen, shards
    # and the shards of one count partition the ids exactly
    for n in (1, 3, 8):
        parts = [{i for i in ids if Shard(k, n).contains(i)} for k in range(n)]
        assert set().union(*parts) == set(ids)
        assert all(not (a & b) for a, b in itertools.combinations(parts, 2))
