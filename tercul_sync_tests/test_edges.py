"""Edges as cross-references, checked against SQL over raw REST beacons."""

from __future__ import annotations

import sqlalchemy as sa

from tercul_sync import demo_data, source
from tercul_sync_tests.helpers import assert_references_match, metadata, run_sync, stored_references


def test_full_sync_writes_exactly_the_live_edges_and_is_idempotent(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = source.make_engine(pg_database)
    written = demo_data.generate(engine, 5_000, seed=3)
    assert written["edges"] >= 10_000

    first = run_sync(pg_database, weaviate_server_proc)
    expected = assert_references_match(engine, weaviate_server_proc)
    assert sum(len(v) for v in expected.values()) > 8_000

    md = metadata(first, "edges")
    for reason in (
        "unknown_relation",
        "missing_target",
        "deleted_target",
        "deleted_source",
        "missing_source",
    ):
        assert md[f"skipped_{reason}"] > 0, reason
        assert md["skipped_sample_ids"][reason], reason
    assert md["edges_read"] == md["edges_valid"] + sum(
        v for k, v in md.items() if k.startswith("skipped_") and isinstance(v, int)
    )
    assert first.get_asset_check_evaluations()[-1].passed  # skipped edges do not fail anything

    run_sync(pg_database, weaviate_server_proc)
    assert_references_match(engine, weaviate_server_proc)


def test_removed_edges_and_deleted_targets_remove_references(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = source.make_engine(pg_database)
    demo_data.generate(engine, 1_500, seed=5)
    run_sync(pg_database, weaviate_server_proc)
    before = assert_references_match(engine, weaviate_server_proc)

    (w1, a1), (w2, a2) = [(k[2], min(v)) for k, v in before.items() if k[:2] == ("Work", "authors")][:2]
    (t_src, t_work) = next(
        (k[2], min(v)) for k, v in before.items() if k[:2] == ("Translation", "translation_of")
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE edges SET deleted_at = now() WHERE source_table='works' AND relation='authors' AND source_id=:s AND target_id=:t"
            ),
            {"s": w1, "t": a1},
        )
        conn.execute(
            sa.text(
                "DELETE FROM edges WHERE source_table='works' AND relation='authors' AND source_id=:s AND target_id=:t"
            ),
            {"s": w2, "t": a2},
        )
        conn.execute(sa.text("UPDATE works SET deleted_at = now() WHERE id = :w"), {"w": t_work})
    run_sync(pg_database, weaviate_server_proc)
    after = assert_references_match(engine, weaviate_server_proc)
    assert a1 not in after.get(("Work", "authors", w1), set())
    assert a2 not in after.get(("Work", "authors", w2), set())
    assert t_work not in after.get(("Translation", "translation_of", t_src), set())


def test_edge_window_syncs_only_its_edges(pg_database, weaviate_server_proc, weaviate_client):
    engine = source.make_engine(pg_database)
    demo_data.generate(engine, 1_000, seed=9)
    run_sync(pg_database, weaviate_server_proc)
    # New edges everywhere; a window over the first 100 edge rows only touches their sources.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO edges (created_at, updated_at, source_table, source_id, target_table, target_id, relation) "
                "SELECT now(), now(), 'works', w.id, 'tags', 1, 'tags' FROM works w WHERE w.deleted_at IS NULL AND w.id <= 300"
            )
        )
        first_window_sources = {
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT source_id FROM edges WHERE source_table = 'works' "
                    "AND relation IN ('authors', 'tags', 'categories') AND id IN (SELECT id FROM edges ORDER BY id LIMIT 100)"
                )
            )
        }
    result = run_sync(
        pg_database,
        weaviate_server_proc,
        selection=["edges"],
        run_config={"ops": {"edges": {"config": {"batch_size": 100, "offset": 0}}}},
    )
    md = metadata(result, "edges")
    assert md["window"] == "offset 0, batch_size 100" and md["window_edge_rows"] == 100
    stored = stored_references(weaviate_server_proc)
    with_new_tag = {k[2] for k, v in stored.items() if k[:2] == ("Work", "tags") and 1 in v}
    live_window_sources = {s for s in first_window_sources if s <= 300}
    assert with_new_tag >= live_window_sources - _soft_deleted(engine, "works")
    # sources outside the window were not touched: the new edges of works past them are not there yet
    assert not (with_new_tag - first_window_sources - _had_tag_one_before(engine))
    # a full edges pass brings everything in line
    run_sync(pg_database, weaviate_server_proc, selection=["edges"])
    assert_references_match(engine, weaviate_server_proc)


def _soft_deleted(engine: sa.Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT id FROM {table} WHERE deleted_at IS NOT NULL")).scalars())


def _had_tag_one_before(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT source_id FROM edges WHERE source_table='works' AND relation='tags' AND target_id=1 "
                    "AND deleted_at IS NULL AND created_at < now() - interval '1 second'"
                )
            ).scalars()
        )
