"""The delete log (``engine/delete_log.py``), against real PostgreSQL and Weaviate: rows and edges
deleted outright are found from the log, without the count searches."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.devtools import cli, demo_data
from tercul_sync.engine import delete_log, reading
from tercul_sync.engine.registry import ENTITIES
from tercul_sync_tests.helpers import (
    assert_objects_match,
    assert_references_match,
    metadata,
    run_sync,
)

pytestmark = pytest.mark.services

STEPS = [e.collection for e in ENTITIES] + ["edges", "passages"]


def _delete_every(conn: sa.Connection, table: str, step: int, where: str = "TRUE") -> list[int]:
    """Delete outright every ``step``-th live row of ``table`` (matching ``where``); their ids."""
    ids = list(
        conn.execute(
            sa.text(f"SELECT id FROM {table} WHERE deleted_at IS NULL AND {where} ORDER BY id")
        ).scalars()
    )[::step]
    conn.execute(sa.text(f"DELETE FROM {table} WHERE id = ANY(:ids)"), {"ids": ids})
    return ids


def test_rows_and_edges_deleted_outright_are_found_from_the_log(
    pg_database, weaviate_server_proc, weaviate_client, capsys
):
    """Works, authors and tags deleted all over their id spans, and a quarter of the works' tag
    edges: the incremental run deletes exactly those objects and rewrites the sources from the log,
    so no count search runs, and Weaviate equals SQL."""
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 800, seed=11)
    instance = dg.DagsterInstance.ephemeral()
    assert run_sync(pg_database, weaviate_server_proc, selection=STEPS, instance=instance).success
    assert cli.main(["delete-log", "--url", pg_database]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "delete log: installed"

    with engine.begin() as conn:
        deleted = {
            "Work": _delete_every(conn, "works", 7),
            "Author": _delete_every(conn, "authors", 5),
            "Tag": _delete_every(conn, "tags", 3),
        }
        _delete_every(conn, "edges", 4, "source_table = 'works' AND relation = 'tags'")
        # A row deleted and inserted again under the same id is live: its object stays.
        back = deleted["Author"].pop()
        conn.execute(
            sa.text(
                "INSERT INTO authors (id, name, created_at, updated_at) "
                "VALUES (:i, 'Back again', now(), now())"
            ),
            {"i": back},
        )
    result = run_sync(pg_database, weaviate_server_proc, STEPS, instance=instance, mode="incremental")
    for collection, ids in deleted.items():
        md = metadata(result, collection)
        assert md["objects_removed_by_delete_log"] == len(ids), collection
        assert not md["orphan_sweep"], collection  # the counts matched: no search, no walk
    # The passages of removed works went without a walk over every passage.
    assert metadata(result, "passages")["parents_swept"] == "none"
    edges = metadata(result, "edges")
    assert edges["delete_log"] == "installed"
    # The cursors were taken before the log was installed, so the count check ran; the log had
    # named every source that changed, and it found nothing more.
    assert edges["reconciled_by_count_check"] == "none"
    assert_objects_match(engine, weaviate_client)
    assert_references_match(engine, weaviate_server_proc)

    # Now the cursors have read the log: the next run trusts it and skips the count check. The
    # log alone must then be enough for references to removed edges and removed targets.
    with engine.begin() as conn:
        more = _delete_every(conn, "authors", 9)
        _delete_every(conn, "edges", 5, "source_table = 'translations'")
    again = run_sync(pg_database, weaviate_server_proc, STEPS, instance=instance, mode="incremental")
    assert metadata(again, "edges")["reconciled_by_count_check"] == "skipped: the delete log covers this run"
    # Read again inside the overlap window, the first round's removals delete nothing more.
    assert metadata(again, "Author")["objects_removed_by_delete_log"] == len(more)
    assert metadata(again, "Work")["objects_removed_by_delete_log"] == 0
    assert_objects_match(engine, weaviate_client)
    assert_references_match(engine, weaviate_server_proc)

    # A reload of the edges (TRUNCATE, then half of them back, unchanged): no row is named, so the
    # log does not cover the edges any more; the count check runs and finds the sources that lost some.
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE kept ON COMMIT DROP AS SELECT * FROM edges WHERE id % 2 = 0"))
        conn.execute(sa.text("TRUNCATE edges"))
        conn.execute(sa.text("INSERT INTO edges SELECT * FROM kept"))
    reloaded = run_sync(pg_database, weaviate_server_proc, STEPS, instance=instance, mode="incremental")
    reconciled = metadata(reloaded, "edges")["reconciled_by_count_check"]
    assert "Work (" in reconciled and "Translation (" in reconciled, reconciled
    assert_references_match(engine, weaviate_server_proc)


def test_the_full_sync_prunes_old_entries_and_the_log_can_be_dropped(
    pg_database, weaviate_server_proc, capsys
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 200, seed=12)
    assert delete_log.status(engine) == "absent"
    delete_log.install(engine)
    delete_log.install(engine)  # again: nothing changes, nothing fails
    # A table made anew (or a trigger dropped) loses its deletes: the log is not trusted then.
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TRIGGER {delete_log.TRIGGER} ON tags"))
    assert delete_log.status(engine) == (
        "installed, but its trigger is missing on tags (run tercul-sync delete-log again)"
    )
    assert not delete_log.present(engine) and delete_log.mark(engine) is None
    delete_log.install(engine)
    assert delete_log.status(engine) == "installed"
    with engine.begin() as conn:  # the TRUNCATE trigger counts as much
        conn.execute(sa.text(f"DROP TRIGGER {delete_log.TRUNCATE_TRIGGER} ON edges"))
    assert delete_log.status(engine).startswith("installed, but its trigger is missing on edges")
    delete_log.install(engine)
    assert delete_log.status(engine) == "installed"
    with engine.begin() as conn:
        gone = _delete_every(conn, "works", 4)
        conn.execute(
            sa.text(
                f"UPDATE {delete_log.LOG_TABLE} SET logged_at = now() - interval '30 days' WHERE row_id = :i"
            ),
            {"i": gone[0]},
        )
    logged = delete_log.removed_rows(engine, "works", [], None, timedelta(0))
    assert sorted(i for i, _ in logged) == gone

    result = run_sync(pg_database, weaviate_server_proc, selection=STEPS)
    assert metadata(result, "edges")["delete_log_pruned"] == 1  # older than TERCUL_SYNC_DELETE_LOG_DAYS
    assert sorted(i for i, _ in delete_log.removed_rows(engine, "works", [], None, timedelta(0))) == gone[1:]

    assert cli.main(["delete-log", "--url", pg_database, "--drop"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "delete log: absent"
    with engine.begin() as conn:  # the triggers went with it: deletes work as before
        conn.execute(sa.text("DELETE FROM works WHERE id = :i"), {"i": gone[-1] + 1})
