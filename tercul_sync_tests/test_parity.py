"""Parity: the frames diff (unit) and the whole check against real PostgreSQL and Weaviate (services)."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa
import weaviate
from weaviate.classes.data import DataObject

from tercul_sync.devtools import demo_data
from tercul_sync.engine import digests, reading, runs
from tercul_sync.engine import weaviate_client as weaviate_client_module
from tercul_sync.engine.digests import DIGEST_PROPERTY
from tercul_sync.engine.objects import REF_COUNT_PROPERTY
from tercul_sync.engine.parity import DIGESTS, FRAME_COLUMNS, WALK, ParityReport, check_parity, diff
from tercul_sync.engine.registry import entity, object_uuid, sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

SHARDS = {f"shard-{i}": reading.Shard(i, 3) for i in range(3)}


def _frame(rows: dict[int, tuple[int, int, int]]) -> pd.DataFrame:
    """``{id: (digest, ref_count, ref_digest)}`` as either side's frame."""
    ids = list(rows)
    data = {name: [rows[i][k] for i in ids] for k, name in enumerate(FRAME_COLUMNS)}
    return pd.DataFrame(data, index=pd.Index(ids, name="id", dtype="int64"), dtype="int64")


@pytest.mark.unit
def test_the_diff_names_every_kind_of_difference():
    db = _frame({1: (10, 0, 0), 2: (20, 2, 7), 3: (30, 1, 5), 4: (40, 0, 0), 5: (50, 2, 8)})
    wv = _frame({1: (10, 0, 0), 2: (21, 2, 7), 3: (30, 3, 5), 5: (50, 2, 9), 9: (90, 0, 0)})
    report = ParityReport("Work")
    diff(db, wv, report)
    # 3 carries another number of references, 5 as many as it should but to other targets.
    assert report.counts == {"missing": 1, "orphan": 1, "stale": 1, "wrong_references": 2}
    assert report.samples == {"missing": [4], "orphan": [9], "stale": [2], "wrong_references": [3, 5]}
    assert (report.rows, report.objects, report.exact) == (5, 5, False)
    assert "1 missing, 1 orphan, 1 stale, 2 wrong references" in report.describe()


@pytest.mark.unit
def test_equal_frames_are_exact():
    frame = _frame({1: (10, 0, 0), 2: (20, 2, 3)})
    report = ParityReport("Tag")
    diff(frame, frame.copy(), report)
    assert report.exact and report.describe() == "Tag: exact (2 live rows, 2 objects)"


@pytest.mark.unit
def test_the_nightly_parity_job_walks_every_object():
    """The sync jobs' checks compare digests first (``ParityConfig``'s default); the nightly
    ``parity`` job is configured to walk."""
    from tercul_sync.defs.checks import PARITY_STEP, ParityConfig, parity

    assert ParityConfig().walk is False
    assert parity.config is not None and parity.config["ops"][PARITY_STEP]["config"] == {"walk": True}


@pytest.mark.services
def test_parity_is_exact_after_a_sync_and_finds_each_kind_of_damage(
    pg_database: str, weaviate_client: weaviate.WeaviateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways, by digests (ranges of 8 ids here, so that most ranges match and are not read)
    and by a walk, find the same damage. Each kind of damage lies in a range of its own: a sum
    that missed one kind would miss it."""
    monkeypatch.setattr(digests, "BUCKET", 8)
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 600, seed=11)
    settings = load_settings(vectorizer="none")
    ensure_schema(weaviate_client, settings)
    ctx = SyncContext(engine, weaviate_client, settings)
    for e in sync_order():
        runs.run_entity(ctx, e, SHARDS, runs.FULL, {})
    runs.run_edges(ctx, SHARDS, runs.FULL, {})
    shards = list(SHARDS.values())
    for e in sync_order():
        quick = check_parity(engine, weaviate_client, e, shards, settings)
        assert quick.exact and (quick.method, quick.ranges_read) == (DIGESTS, 0), e.collection
        walked = check_parity(engine, weaviate_client, e, shards, settings, walk=True)
        assert walked.exact and walked.method == WALK, e.collection
        assert (quick.rows, quick.objects) == (walked.rows, walked.objects) == (walked.rows, walked.rows)

    work = weaviate_client.collections.use("Work")
    with engine.connect() as conn:
        live = list(
            conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id")).scalars()
        )
        # One live Work -> Author edge to a live author, and a live author that work does not name.
        edge, source, old_target = conn.execute(
            sa.text(
                "SELECT e.id, e.source_id, e.target_id FROM edges e"
                " JOIN works w ON w.id = e.source_id AND w.deleted_at IS NULL"
                " JOIN authors a ON a.id = e.target_id AND a.deleted_at IS NULL"
                " WHERE e.source_table = 'works' AND e.relation = 'authors'"
                " AND e.target_table = 'authors' AND e.deleted_at IS NULL AND e.source_id > :after"
                " ORDER BY e.id LIMIT 1"
            ),
            {"after": live[len(live) * 4 // 5]},
        ).one()
        new_target = conn.execute(
            sa.text(
                "SELECT min(id) FROM authors WHERE deleted_at IS NULL AND id NOT IN"
                " (SELECT target_id FROM edges WHERE source_table = 'works' AND source_id = :s)"
            ),
            {"s": source},
        ).scalar_one()
    missing, edited, wrong, revised = (live[len(live) * k // 5] for k in range(4))
    assert len(live) > 50 and revised < source  # the damaged ids in ranges of their own
    work.data.delete_by_id(object_uuid("Work", missing))
    # Behind the sync's back in Weaviate: a digest and a reference count edited by hand.
    work.data.update(uuid=object_uuid("Work", edited), properties={DIGEST_PROPERTY: 12345})
    work.data.update(uuid=object_uuid("Work", wrong), properties={REF_COUNT_PROPERTY: 99})
    orphan = max(live) + 1000
    work.data.insert_many(
        [DataObject(properties={"source_id": orphan, "title": "ghost"}, uuid=object_uuid("Work", orphan))]
    )
    # In the database, with no sync since: a title changed without touching updated_at (a check of
    # updated_at could not see it), and an edge moved to another author (as many references as
    # before, to another target).
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE works SET title = title || ' (revised)' WHERE id = :i"), {"i": revised})
        conn.execute(sa.text("UPDATE edges SET target_id = :t WHERE id = :e"), {"t": new_target, "e": edge})
    assert old_target != new_target

    report = check_parity(engine, weaviate_client, entity("Work"), shards, settings)
    walked = check_parity(engine, weaviate_client, entity("Work"), shards, settings, walk=True)
    # Only the ranges holding the damage were read, object by object.
    assert report.method == DIGESTS and 0 < report.ranges_read <= 7
    for r in (report, walked):
        assert r.counts == {"missing": 1, "orphan": 1, "stale": 2, "wrong_references": 2}
        assert r.samples["missing"] == [missing] and r.samples["orphan"] == [orphan]
        assert sorted(r.samples["stale"]) == sorted([edited, revised])
        assert sorted(r.samples["wrong_references"]) == sorted([wrong, source])
    assert (report.rows, report.objects) == (walked.rows, walked.objects)
    assert check_parity(engine, weaviate_client, entity("Author"), shards, settings).exact  # untouched
    # An object without a source_id lies in no range: the count says so, and the check walks.
    authors = weaviate_client.collections.use("Author")
    stray = authors.data.insert(properties={"name": "no source_id"})
    stray_report = check_parity(engine, weaviate_client, entity("Author"), shards, settings)
    assert stray_report.method == WALK and stray_report.counts["orphan"] == 1
    authors.data.delete_by_id(stray)

    # A full run writes the missing, sweeps the orphan, and rewrites what the database changed.
    runs.run_entity(ctx, entity("Work"), SHARDS, runs.FULL, {})
    after = check_parity(engine, weaviate_client, entity("Work"), shards, settings)
    # Objects edited behind the sync's back keep their content hash, so a full run skips them: parity is
    # what shows them, and a forced run rewrites them.
    assert after.counts == {"missing": 0, "orphan": 0, "stale": 1, "wrong_references": 1}
    assert after.samples["stale"] == [edited] and after.samples["wrong_references"] == [wrong]
    # The objects written with other settings (here another vectorizer) are stale, every one.
    other = check_parity(
        engine, weaviate_client, entity("Author"), shards, load_settings(vectorizer="weaviate")
    )
    assert other.counts["stale"] == other.rows > 0
    assert other.method == WALK  # every range differs: reading them all is a walk
    forced = SyncContext(engine, weaviate_client, settings, force=True)
    runs.run_entity(forced, entity("Work"), SHARDS, runs.FULL, {})
    assert check_parity(engine, weaviate_client, entity("Work"), shards, settings).exact


@pytest.mark.services
def test_a_full_run_moves_the_cursor_of_every_shard_but_one_whose_writes_gave_up(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    """Every shard is read in one stream of pages; a transient failure that outlasts the retries
    still holds back only the cursor of the shard its row belongs to."""
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 600, seed=12)
    settings = load_settings(vectorizer="none", retry_attempts=1, batch_size=7)
    ensure_schema(weaviate_client, settings)
    tag = entity("Tag")
    with engine.connect() as conn:
        stuck = conn.execute(sa.text("SELECT min(id) FROM tags WHERE deleted_at IS NULL")).scalar_one()

    def send(client, collection, items):
        errors = {i: "connection refused" for i, o in enumerate(items) if o.row_id == stuck}
        landed = [o for i, o in enumerate(items) if i not in errors]
        refused = weaviate_client_module.send_objects(client, collection, landed)
        kept = [i for i in range(len(items)) if i not in errors]
        return errors | {kept[j]: m for j, m in refused.items()}

    ctx = SyncContext(engine, weaviate_client, settings, send=send)
    run = runs.run_entity(ctx, tag, SHARDS, runs.FULL, {})
    held = f"shard-{stuck % 3}"
    assert run.report.write.gave_up == 1 and run.report.write.gave_up_keys() == {stuck}
    assert sorted(run.cursors) == sorted(k for k in SHARDS if k != held)
    assert run.report.write.written == reading.count_live(engine, tag) - 1


@pytest.mark.services
def test_the_parity_step_reports_each_collection_against_its_own_asset(
    pg_database: str, weaviate_server_proc, weaviate_client: weaviate.WeaviateClient
) -> None:
    """The checks run two at a time in one step: each result still names its own collection."""
    import dagster as dg

    from tercul_sync.defs.assets import build_assets
    from tercul_sync.defs.checks import PARITY_CHECK, PARITY_STEP, ParityConfig, build_parity_checks
    from tercul_sync_tests import helpers

    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 600, seed=12)
    assert helpers.run_sync(pg_database, weaviate_server_proc).success
    damaged = {}
    for name, table in (("Work", "works"), ("Tag", "tags")):
        with engine.connect() as conn:
            row = conn.execute(sa.text(f"SELECT min(id) FROM {table} WHERE deleted_at IS NULL")).scalar_one()
        weaviate_client.collections.use(name).data.delete_by_id(object_uuid(name, row))
        damaged[name] = row

    checks = build_parity_checks(helpers.SHARDS, passages=False)
    job = dg.define_asset_job("parity", selection=dg.AssetSelection.checks(checks))
    defs = dg.Definitions(
        assets=build_assets(helpers.SHARDS, passages=False),
        asset_checks=[checks],
        jobs=[job],
        resources=helpers.resources(pg_database, weaviate_server_proc),
    )
    # By digests (the checks' default, in the sync jobs) and by a walk (the `parity` job's config).
    for method in (DIGESTS, WALK):
        config = dg.RunConfig(ops={PARITY_STEP: ParityConfig(walk=method == WALK)})
        result = defs.resolve_job_def("parity").execute_in_process(run_config=config)
        evaluations = {
            e.asset_key.to_user_string(): e
            for e in result.get_asset_check_evaluations()
            if e.check_name == PARITY_CHECK
        }
        assert set(evaluations) == {e.collection for e in sync_order()}
        for name, evaluation in evaluations.items():
            assert evaluation.metadata["method"].value == method, name
            if name in damaged:
                assert not evaluation.passed, name
                assert evaluation.metadata["missing"].value == 1, name
                assert damaged[name] in evaluation.metadata["sample_ids"].value["missing"], name
            else:
                assert evaluation.passed, name
