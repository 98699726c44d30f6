"""The change sensor: an incremental run of what changed, seconds after it changed, and none while idle.

Every ``TERCUL_SYNC_SENSOR_INTERVAL`` seconds (default 30) ``tercul_changes``
reads three aggregates per table (``engine.changes.table_marks``: newest
``updated_at``, newest ``deleted_at``, row count) and compares them with its
cursor, the same marks from its previous check. When tables changed it
requests one run of ``incremental_sync`` limited to the assets they feed; its
run key is made from the two marks, so a re-evaluated tick never launches
twice. The pools still serialize steps of one asset, and the ten-minute
schedule stays as the safety net for what the marks cannot see.

Its runs are of ``sync_changes``: ``incremental_sync``'s assets and tags, with
the in-process executor. A run the sensor asks for is small (the rows changed
in one interval), so one process that already imported the code location runs
its steps in turn, with one set of connections, instead of a process per step
opening its own; the pools apply all the same. And
``edges`` is left out when an entity table only had updates (its newest
``updated_at`` moved, not its count or its newest ``deleted_at``): the entity
step writes each updated object whole with its references, and no reference
to it changes; inserts, deletes and changed edges still bring ``edges``. Of
the checks, only those each step reports itself run: the ``parity`` checks
(whole collections against their tables) stay with the schedules' runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from tercul_sync.defs import jobs
from tercul_sync.defs.assets import CHECK_NAME, EDGES_ASSET, MODE_TAG, PASSAGES_ASSET, VECTOR_CHECK
from tercul_sync.defs.resources import SETTINGS, TerculDatabase
from tercul_sync.engine.changes import TableMarks, changed_tables, table_marks
from tercul_sync.engine.registry import EDGES_TABLE, ENTITIES, RELATIONS, passage_parents
from tercul_sync.engine.runs import INCREMENTAL

SENSOR_NAME = "tercul_changes"
CHANGED_TAG = "tercul_sync/changed_tables"


CHANGES_JOB = "sync_changes"
# Marks that move when a row appears or goes (insert, soft or hard delete): reference lists may change.
MEMBERSHIP_MARKS = ("count", "deleted_at")

sync_changes = dg.define_asset_job(
    CHANGES_JOB,
    selection=jobs.ALL,
    description="What the change sensor launches: incremental_sync's assets and tags, run in one process "
    "(the in-process executor), for the small runs a change makes.",
    tags={**jobs.ALL_SHARDS_TAGS, MODE_TAG: INCREMENTAL},
    executor_def=dg.in_process_executor,
)


def membership_changed(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether a table's rows came or went between two marks (not only updates)."""
    return before is None or any(before.get(m) != after.get(m) for m in MEMBERSHIP_MARKS)


def assets_for(tables: Iterable[str], updates_only: Iterable[str] = ()) -> list[str]:
    """The assets an incremental run needs after ``tables`` changed, in name order.

    A changed entity table: its asset; the passages when it is a parent of
    passages; the edges when its type is a source or a target of a relation
    (reference lists follow new rows, soft and hard deletes), unless the table
    is among ``updates_only`` (rows updated, none added or removed: each object
    is rewritten whole, with its references, by its own asset). A changed
    ``edges`` table: the edges.
    """
    by_table = {e.table: e.collection for e in ENTITIES}
    in_relations = {r.source for r in RELATIONS} | {r.target for r in RELATIONS}
    parents = {e.collection for e in passage_parents()}
    updated = set(updates_only)
    out: set[str] = set()
    for table in tables:
        if table == EDGES_TABLE:
            out.add(EDGES_ASSET)
            continue
        collection = by_table[table]
        out.add(collection)
        if collection in in_relations and table not in updated:
            out.add(EDGES_ASSET)
        if collection in parents:
            out.add(PASSAGES_ASSET)
    return sorted(out)


def own_checks(assets: Iterable[str]) -> list[dg.AssetCheckKey]:
    """The checks each asset's step reports itself (failed objects, vectors), and not the ``parity``
    checks: those compare whole collections with their tables, which is the schedules' work, not the
    work of a run that wrote a few rows."""
    return [dg.AssetCheckKey(dg.AssetKey(a), name) for a in assets for name in (CHECK_NAME, VECTOR_CHECK)]


def assets_between(before: TableMarks, after: TableMarks) -> tuple[list[str], list[str]]:
    """The changed tables between two checks, and the assets a run needs for them."""
    changed = changed_tables(before, after)
    updates_only = [
        t for t in changed if t != EDGES_TABLE and not membership_changed(before.get(t), after[t])
    ]
    return changed, assets_for(changed, updates_only)


@dg.sensor(
    name=SENSOR_NAME,
    job=sync_changes,
    minimum_interval_seconds=SETTINGS.sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One incremental run (sync_changes, in one process) of the entity types (and edges, "
    "passages) whose tables changed since the last check (TERCUL_SYNC_SENSOR_INTERVAL); nothing while "
    "no table changes.",
)
def tercul_changes(context: dg.SensorEvaluationContext, tercul_db: TerculDatabase) -> dg.SensorResult:
    marks = table_marks(tercul_db.engine)
    cursor = json.dumps(marks, sort_keys=True)
    if context.cursor is None:
        # The first check has nothing to compare with: what came before is the schedules' work.
        return dg.SensorResult(skip_reason="first check: recorded where every table stands", cursor=cursor)
    changed, assets = assets_between(json.loads(context.cursor), marks)
    if not changed:
        return dg.SensorResult(skip_reason="no table changed", cursor=cursor)
    # From both marks: the same tick evaluated again asks for the same run (Dagster launches it once),
    # and a table that returns to an earlier state still gets a new key.
    run_key = hashlib.sha256(f"{context.cursor}\n{cursor}".encode()).hexdigest()[:32]
    request = dg.RunRequest(
        run_key=run_key,
        asset_selection=[dg.AssetKey(a) for a in assets],
        asset_check_keys=own_checks(assets),
        tags={
            **jobs.ALL_SHARDS_TAGS,
            MODE_TAG: INCREMENTAL,
            jobs.TRIGGER_TAG: SENSOR_NAME,
            CHANGED_TAG: ",".join(changed),
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)
