"""Range digests (``engine/digests.py``): the search, the SQL that sums them, and full runs that
read only the ranges whose digests differ, against the real PostgreSQL and Weaviate."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import digests, reading
from tercul_sync.engine.registry import ENTITIES, entity, relations_from
from tercul_sync.engine.settings import load_settings
from tercul_sync_tests.helpers import assert_objects_match, assert_references_match, metadata, run_sync

# --- the search, pure ----------------------------------------------------------------------


def _sides(buckets: int, differ: set[int]) -> tuple[list[tuple[int, int]], object, object]:
    """A database side and a Weaviate side that differ in the buckets ``differ``; the second
    records every range it was asked about."""
    asked: list[tuple[int, int]] = []

    def database(a: int, b: int) -> digests.Sums:
        return (b - a, 7 * (b - a))

    def weaviate(a: int, b: int) -> digests.Sums:
        asked.append((a, b))
        return (b - a, 7 * (b - a) + sum(1 for x in differ if a <= x < b))

    return asked, database, weaviate


@pytest.mark.unit
@pytest.mark.parametrize("differ", [set(), {0}, {5}, {3, 4, 99}, {0, 63}])
def test_the_search_finds_exactly_the_buckets_that_differ(differ):
    asked, database, weaviate = _sides(100, differ)
    assert digests.differing_buckets(100, database, weaviate, max_share=0.25) == sorted(differ)
    if not differ:
        assert asked == [(0, 100)]  # nothing changed: one question


@pytest.mark.unit
def test_the_search_gives_up_once_differences_are_everywhere():
    asked, database, weaviate = _sides(64, set(range(0, 64, 2)))
    assert digests.differing_buckets(64, database, weaviate, max_share=0.25) is None
    assert len(asked) < 64  # it stopped halving before measuring every bucket


@pytest.mark.unit
def test_no_measured_range_is_wider_than_the_sums_stay_exact_for():
    buckets = 3 * digests.MAX_BUCKETS + 5
    asked, database, weaviate = _sides(buckets, {digests.MAX_BUCKETS + 1})
    assert digests.differing_buckets(buckets, database, weaviate, max_share=0.25) == [digests.MAX_BUCKETS + 1]
    assert max(b - a for a, b in asked) <= digests.MAX_BUCKETS


@pytest.mark.unit
def test_buckets_become_ranges_of_ids_with_neighbours_merged():
    b = digests.BUCKET
    assert digests.merge_buckets([0, 1, 5], low=10) == [(10, 10 + 2 * b), (10 + 5 * b, 10 + 6 * b)]
    measure = digests.prefix_measure({0: (2, 10), 3: (1, 5)}, 4)
    assert measure(0, 4) == (3, 15) and measure(1, 3) == (0, 0) and measure(3, 4) == (1, 5)


# --- the SQL sums, on SQLite ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    engine = reading.make_engine(f"sqlite:///{tmp_path_factory.mktemp('digests') / 't.db'}")
    demo_data.generate(engine, 1_500, seed=3)
    with engine.begin() as conn:  # an edge twice, for relations of each kind: a reference once
        for relation in ("parent", "tags"):
            conn.execute(
                sa.text(
                    "INSERT INTO edges (created_at, updated_at, source_table, source_id, target_table, "
                    "target_id, relation) SELECT created_at, updated_at, source_table, source_id, "
                    "target_table, target_id, relation FROM edges WHERE relation = :r AND deleted_at IS NULL "
                    "ORDER BY id LIMIT 3"
                ),
                {"r": relation},
            )
    return engine


def _objects_digests(engine: sa.Engine, e, fingerprint: int) -> dict[int, tuple[int, int]]:
    """Each live row's object digests as ObjectSyncer computes them (the row's, the references'),
    every reference present."""
    rows = [r for page in reading.iter_live_pages(engine, e, [reading.Shard(0, 1)], 500) for r in page]
    edges = reading.live_edges_from(engine, relations_from(e.collection), [r["id"] for r in rows])
    refs: dict[int, set[tuple[str, int]]] = {}
    for name, by_source in edges.items():
        for source_id, pairs in by_source.items():
            refs.setdefault(source_id, set()).update((name, t) for _, t in pairs)
    return {
        r["id"]: (
            digests.object_digest(r[digests.ROW_DIGEST_COLUMN], fingerprint),
            digests.references_digest([digests.edge_digest(n, t) for n, t in refs.get(r["id"], ())]),
        )
        for r in rows
    }


@pytest.mark.unit
@pytest.mark.parametrize("collection", ["Work", "Category", "Tag"])
@pytest.mark.parametrize("rows", [True, False])
def test_the_databases_sums_are_the_sums_of_the_digests_the_writer_gives_its_objects(
    demo_engine, collection, rows
):
    e = entity(collection)
    fingerprint = digests.fingerprint(e, load_settings({}))
    per_object = _objects_digests(demo_engine, e, fingerprint)
    low = min(per_object)
    expected: dict[int, digests.Sums] = {}
    for row_id, (row_part, reference_part) in per_object.items():
        n, s = expected.get((row_id - low) // digests.BUCKET, (0, 0))
        expected[(row_id - low) // digests.BUCKET] = (n + 1, s + reference_part + (row_part if rows else 0))
    assert reading.digest_buckets(demo_engine, e, fingerprint, low, rows=rows) == expected


@pytest.mark.unit
def test_a_row_digest_changes_with_every_column_the_object_holds(demo_engine):
    work = entity("Work")

    def digest_of(row_id: int) -> int:
        return reading.fetch_live_rows(demo_engine, work, [row_id])[0][digests.ROW_DIGEST_COLUMN]

    with demo_engine.connect() as conn:
        row_id = conn.execute(sa.text("SELECT min(id) FROM works WHERE deleted_at IS NULL")).scalar_one()
    before = digest_of(row_id)
    assert digest_of(row_id) == before  # the same row, the same digest
    changes = {
        "title": "title || 'x'",
        "genre": "CASE WHEN genre IS NULL THEN 'x' ELSE NULL END",
        "published_year": "coalesce(published_year, 0) + 1",
        "is_public_domain": "CASE WHEN is_public_domain THEN 0 ELSE 1 END",
        "body": "coalesce(body, '') || 'x'",
        "original_language": "original_language || 'x'",
        "summary": "coalesce(summary, '') || 'x'",
        "created_at": "datetime(created_at, '+1 second')",
        "updated_at": "datetime(updated_at, '+1 second')",
    }
    assert set(changes) == {c.name for c in work.property_columns}
    for column, expression in changes.items():
        with demo_engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE works SET {column} = {expression} WHERE id = :i"), {"i": row_id})
        after = digest_of(row_id)
        assert after != before, column
        before = after


# --- full runs against PostgreSQL and Weaviate ----------------------------------------------


def _generate(url: str) -> sa.Engine:
    engine = reading.make_engine(url)
    demo_data.generate(engine, 3_000, seed=21)
    return engine


@pytest.mark.services
def test_changes_no_cursor_sees_are_found_by_digest_and_read_alone(
    pg_database, weaviate_server_proc, weaviate_client, monkeypatch
):
    """Changes made behind the cursors' back (``updated_at`` untouched): a full run finds each one
    by its range's digest, reads only those ranges, and converges exactly. Buckets of 32 ids, so
    that these few hundred works span many of them."""
    monkeypatch.setattr(digests, "BUCKET", 32)
    engine = _generate(pg_database)
    assert run_sync(pg_database, weaviate_server_proc).success
    rng = random.Random(4)
    with engine.begin() as conn:
        works = list(conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL")).scalars())
        tags = list(conn.execute(sa.text("SELECT id FROM tags WHERE deleted_at IS NULL")).scalars())
        changed, gone = rng.sample(works, 2)
        conn.execute(sa.text("UPDATE works SET title = title || ' (revised)' WHERE id = :i"), {"i": changed})
        conn.execute(sa.text("DELETE FROM works WHERE id = :i"), {"i": gone})
        # one edge moved to another live tag: the source's reference count stays the same
        edge, source, old = conn.execute(
            sa.text(
                "SELECT id, source_id, target_id FROM edges WHERE relation = 'tags' AND deleted_at IS NULL "
                "AND source_id IN (SELECT id FROM works WHERE deleted_at IS NULL) "
                "AND target_id IN (SELECT id FROM tags WHERE deleted_at IS NULL) ORDER BY id LIMIT 1"
            )
        ).one()
        linked = set(
            conn.execute(
                sa.text("SELECT target_id FROM edges WHERE relation = 'tags' AND source_id = :s"),
                {"s": source},
            ).scalars()
        )
        new = next(t for t in tags if t not in linked)
        conn.execute(sa.text("UPDATE edges SET target_id = :t WHERE id = :i"), {"t": new, "i": edge})
        # a tag soft-deleted: the works pointing at it (the fewest of any tag's) lose that reference
        doomed = conn.execute(
            sa.text(
                "SELECT target_id FROM edges WHERE relation = 'tags' AND deleted_at IS NULL "
                "AND target_id NOT IN (:a, :b) "
                "AND target_id IN (SELECT id FROM tags WHERE deleted_at IS NULL) "
                "GROUP BY target_id ORDER BY count(*), target_id LIMIT 1"
            ),
            {"a": old, "b": new},
        ).scalar_one()
        conn.execute(sa.text("UPDATE tags SET deleted_at = created_at WHERE id = :i"), {"i": doomed})

    result = run_sync(pg_database, weaviate_server_proc)
    assert result.success
    work = metadata(result, "Work")
    assert work["objects_deleted"] == 1 and work["objects_written"] >= 2
    assert work["digest_ranges_read"] >= 1
    assert work["rows_read"] < reading.count_live(engine, entity("Work"))  # not every row
    assert metadata(result, "Tag")["objects_deleted"] == 1
    assert_objects_match(engine, weaviate_client)
    assert_references_match(engine, weaviate_server_proc)

    quiet = run_sync(pg_database, weaviate_server_proc)  # and then nothing is left to read
    assert all(metadata(quiet, e.collection)["rows_read"] == 0 for e in ENTITIES)


@pytest.mark.unit
def test_the_check_applies_unless_forced_switched_off_or_vectors_come_from_columns(demo_engine):
    assert digests.applies(demo_engine, load_settings({}), force=False)
    assert not digests.applies(demo_engine, load_settings({}), force=True)
    for variable, value in [("TERCUL_SYNC_RANGE_DIGESTS", "false"), ("TERCUL_SYNC_VECTORIZER", "column")]:
        assert not digests.applies(demo_engine, load_settings({variable: value}), force=False), variable
    mysql = SimpleNamespace(dialect=SimpleNamespace(name="mysql"))  # no md5 of ours there
    assert not digests.applies(mysql, load_settings({}), force=False)
