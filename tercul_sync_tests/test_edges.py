"""Edges as cross-references, checked against SQL over raw REST beacons."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import sqlalchemy as sa
import weaviate

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading, runs
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import edge_sources, entity, object_uuid, relations_from
from tercul_sync.engine.reports import FailureRule
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext
from tercul_sync_tests.helpers import (
    assert_references_match,
    expected_references,
    metadata,
    run_sync,
    stored_references,
)

pytestmark = pytest.mark.services

SKIP_REASONS = ("unknown_relation", "missing_target", "deleted_target", "deleted_source", "missing_source")


def test_full_sync_writes_exactly_the_live_edges_and_is_idempotent(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    written = demo_data.generate(engine, 5_000, seed=3)
    assert written["edges"] >= 10_000

    first = run_sync(pg_database, weaviate_server_proc)
    expected = assert_references_match(engine, weaviate_server_proc)
    assert sum(len(v) for v in expected.values()) > 8_000

    md = metadata(first, "edges")
    for reason in SKIP_REASONS:
        assert md[f"skipped_{reason}"] > 0, reason
        assert md["skipped_sample_ids"][reason], reason
    assert md["edges_read"] == md["edges_valid"] + sum(md[f"skipped_{r}"] for r in SKIP_REASONS)
    checks = {c.check_name: c for c in first.get_asset_check_evaluations() if c.asset_key.path == ["edges"]}
    assert checks["no_failed_objects"].passed  # skipped edges do not fail anything

    # A source type whose step in this run deferred nothing is not compared again by edges (its
    # objects carry every reference); one that deferred some (Category's parents, written in the
    # same pages) is, and the references it deferred land.
    whole = set(md["sources_written_whole"].split(", ")) - {"none"}
    for e in edge_sources():
        step = metadata(first, e.collection)
        deferred = sum(
            v for k, v in step.items() if k.startswith("references_deferred_") and isinstance(v, int)
        )
        assert (e.collection in whole) == (deferred == 0 and step["objects_failed"] == 0), e.collection
    assert whole and "Category" not in whole, whole
    # An entity step's references to types written whole earlier in the run (no row failed; deferred
    # references do not matter: every object exists) are not checked target by target.
    for e in edge_sources():
        before = {r.target for r in relations_from(e.collection) if r.target != e.collection}
        trusted = {t for t in before if metadata(first, t)["objects_failed"] == 0}
        assert metadata(first, e.collection)["targets_trusted"] == (", ".join(sorted(trusted)) or "none")
    assert "Category" in metadata(first, "Work")["targets_trusted"]

    again = run_sync(pg_database, weaviate_server_proc)
    assert metadata(again, "edges")["objects_written"] == 0  # nothing changed: nothing rewritten
    assert_references_match(engine, weaviate_server_proc)

    alone = run_sync(pg_database, weaviate_server_proc, selection=["edges"])  # no entity step in its run
    assert metadata(alone, "edges")["sources_written_whole"] == "none"
    work_alone = run_sync(
        pg_database, weaviate_server_proc, selection=["Work"]
    )  # its targets' steps: elsewhere
    assert metadata(work_alone, "Work")["targets_trusted"] == "none"


def test_removed_edges_and_deleted_targets_remove_references(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_500, seed=5)
    run_sync(pg_database, weaviate_server_proc)
    before = assert_references_match(engine, weaviate_server_proc)

    (w1, a1), (w2, a2) = [(k[2], min(v)) for k, v in before.items() if k[:2] == ("Work", "authors")][:2]
    (t_src, t_work) = next(
        (k[2], min(v)) for k, v in before.items() if k[:2] == ("Translation", "translation_of")
    )
    one_edge = "source_table='works' AND relation='authors' AND source_id=:s AND target_id=:t"
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE edges SET deleted_at = now() WHERE {one_edge}"), {"s": w1, "t": a1})
        conn.execute(sa.text(f"DELETE FROM edges WHERE {one_edge}"), {"s": w2, "t": a2})
        conn.execute(sa.text("UPDATE works SET deleted_at = now() WHERE id = :w"), {"w": t_work})
    run_sync(pg_database, weaviate_server_proc)
    after = assert_references_match(engine, weaviate_server_proc)
    assert a1 not in after.get(("Work", "authors", w1), set())
    assert a2 not in after.get(("Work", "authors", w2), set())
    assert t_work not in after.get(("Translation", "translation_of", t_src), set())


def _works_with_tag(server, tag: int) -> set[int]:
    return {k[2] for k, v in stored_references(server).items() if k[:2] == ("Work", "tags") and tag in v}


def test_edge_window_syncs_only_its_edges(pg_database, weaviate_server_proc, weaviate_client):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_000, seed=9)
    run_sync(pg_database, weaviate_server_proc)
    with engine.connect() as conn:
        tag = conn.execute(sa.text("SELECT min(id) FROM tags WHERE deleted_at IS NULL")).scalar_one()
        live_works = set(
            conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL AND id <= 300")).scalars()
        )
    tagged_before = _works_with_tag(weaviate_server_proc, tag)  # what the full sync wrote, before any change

    # A new edge to one tag from every live work up to 300; then a window over the first 100 edge rows.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO edges (created_at, updated_at, source_table, source_id, target_table, "
                "target_id, relation) SELECT now(), now(), 'works', w.id, 'tags', :tag, 'tags' "
                "FROM works w WHERE w.deleted_at IS NULL AND w.id <= 300"
            ),
            {"tag": tag},
        )
        window_sources = set(
            conn.execute(
                sa.text(
                    "SELECT source_id FROM edges WHERE source_table = 'works' "
                    "AND relation IN ('authors', 'tags', 'categories') "
                    "AND id IN (SELECT id FROM edges ORDER BY id LIMIT 100)"
                )
            ).scalars()
        )
    untouched = live_works - window_sources - tagged_before
    assert window_sources & live_works and untouched  # the window touches some new edges and not others

    result = run_sync(
        pg_database,
        weaviate_server_proc,
        selection=["edges"],
        run_config={"ops": {"edges": {"config": {"batch_size": 100, "offset": 0}}}},
    )
    md = metadata(result, "edges")
    assert md["window"] == "offset 0, batch_size 100" and md["window_edge_rows"] == 100
    # Exactly: the window's live sources gained the tag; every other work is as the full sync left it.
    assert _works_with_tag(weaviate_server_proc, tag) == tagged_before | (window_sources & live_works)

    run_sync(pg_database, weaviate_server_proc, selection=["edges"])  # a full edges pass: everything in line
    assert _works_with_tag(weaviate_server_proc, tag) >= live_works
    assert_references_match(engine, weaviate_server_proc)


def _demo_context(
    db_url: str, client: weaviate.WeaviateClient
) -> tuple[sa.Engine, SyncContext, dict[str, reading.Shard]]:
    """600 demo rows, the schema made, a context and one shard over everything."""
    engine = reading.make_engine(db_url)
    demo_data.generate(engine, 600, seed=5)
    settings = load_settings()
    ensure_schema(client, settings)
    return engine, SyncContext(engine, client, settings), {"all": reading.Shard(0, 1)}


def test_a_trusted_target_found_missing_sends_its_rows_through_the_check(
    pg_database, weaviate_server_proc, weaviate_client, tmp_path
):
    """References to a trusted type are written unchecked; Weaviate refuses a row whose target has no
    object (here deleted after its step, as if the row were made after that step read), and the row is
    prepared again with the check: it lands without that reference, which is deferred, nothing fails."""
    engine, ctx, shards = _demo_context(pg_database, weaviate_client)
    for name in ("Author", "Tag", "Category"):
        runs.run_entity(ctx, entity(name), shards, runs.FULL, {})
    expected = {k: v for k, v in expected_references(engine).items() if k[0] == "Work"}
    by_author = Counter(a for (_, name, _), targets in expected.items() if name == "authors" for a in targets)
    missing, sources = by_author.most_common(1)[0]
    weaviate_client.collections.use("Author").data.delete_by_id(object_uuid("Author", missing))

    trusting = replace(ctx, trusted=frozenset({"Author", "Tag", "Category"}))
    run = runs.run_entity(trusting, entity("Work"), shards, runs.FULL, {})
    md = runs.summarize(
        "Work",
        [run.report],
        {},
        FailureRule(max_failure_rate=0.0, min_failures_to_fail=1),
        tmp_path / "failures.jsonl",
    ).metadata

    assert md["objects_failed"] == 0, md.get("failure_sample")
    assert md["rows_rechecked"] == sources  # trusted: refused by Weaviate, then checked
    assert md["references_deferred_target_not_in_weaviate"] == sources
    assert md["rows_read"] == reading.count_live(engine, entity("Work"))
    assert wc.count_objects(weaviate_client, "Work") == md["rows_read"]
    stored = {k: set(v) for k, v in stored_references(weaviate_server_proc).items() if k[0] == "Work" and v}
    assert stored == {
        k: left for k, v in expected.items() if (left := v - {missing} if k[1] == "authors" else v)
    }


def test_an_incremental_edges_run_trusts_its_targets_and_rechecks_a_missing_one(
    pg_database, weaviate_server_proc, weaviate_client, tmp_path
):
    """An incremental edges run writes the sources of changed edges without looking each target up
    (they are live rows the entity steps keep in Weaviate); a source whose new target has no object
    is refused by Weaviate, prepared again with the check, and lands with that reference deferred."""
    engine, ctx, shards = _demo_context(pg_database, weaviate_client)
    for e in (entity(n) for n in ("Author", "Publisher", "Tag", "Category", "Work", "Translation", "Book")):
        runs.run_entity(ctx, e, shards, runs.FULL, {})
    cursors = runs.run_edges(ctx, shards, runs.FULL, {}).cursors

    expected = expected_references(engine)
    missing = min(a for (src, name, _), targets in expected.items() if name == "authors" for a in targets)
    weaviate_client.collections.use("Author").data.delete_by_id(object_uuid("Author", missing))
    work_authors = {w: t for (src, name, w), t in expected.items() if (src, name) == ("Work", "authors")}
    new_sources = sorted(w for w, targets in work_authors.items() if missing not in targets)[:3]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO edges (created_at, updated_at, source_table, source_id, target_table, "
                "target_id, relation) SELECT now(), now(), 'works', w, 'authors', :a, 'authors' "
                "FROM unnest(CAST(:ws AS bigint[])) AS w"
            ),
            {"ws": new_sources, "a": missing},
        )

    run = runs.run_edges(ctx, shards, runs.INCREMENTAL, cursors)
    rule = FailureRule(max_failure_rate=0.0, min_failures_to_fail=1)
    md = runs.summarize("edges", run.reports, {}, rule, tmp_path / "f.jsonl").metadata

    assert md["objects_failed"] == 0, md.get("failure_sample")
    assert md["rows_rechecked"] == len(new_sources)  # trusted: refused by Weaviate, then checked
    assert md["references_deferred_target_not_in_weaviate"] >= len(new_sources)
    stored = stored_references(weaviate_server_proc)
    for w in new_sources:
        assert sorted(stored[("Work", "authors", w)]) == sorted(expected[("Work", "authors", w)])
