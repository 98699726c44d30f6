"""The change sensor: an incremental run of what changed, seconds after it changed, and none while idle.

Every ``TERCUL_SYNC_SENSOR_INTERVAL`` seconds (default 30) ``tercul_changes``
reads three aggregates per table (``engine.changes.table_marks``: newest
``updated_at``, newest ``deleted_at``, row count) and compares them with its
cursor, the same marks from its previous check. When tables changed it
requests one run of ``incremental_sync`` limited to the assets they feed; its
run key is made from the two marks, so a re-evaluated tick never launches
twice. The pools still serialize steps of one asset, and the ten-minute
schedule stays as the safety net for what the marks cannot see.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import dagster as dg

from tercul_sync.defs import jobs
from tercul_sync.defs.assets import EDGES_ASSET, MODE_TAG, PASSAGES_ASSET
from tercul_sync.defs.resources import SETTINGS, TerculDatabase
from tercul_sync.engine.changes import changed_tables, table_marks
from tercul_sync.engine.registry import EDGES_TABLE, ENTITIES, RELATIONS, passage_parents
from tercul_sync.engine.runs import INCREMENTAL

SENSOR_NAME = "tercul_changes"
CHANGED_TAG = "tercul_sync/changed_tables"


def assets_for(tables: Iterable[str]) -> list[str]:
    """The assets an incremental run needs after ``tables`` changed, in name order.

    A changed entity table: its asset; the edges when its type is a source or a
    target of a relation (reference lists follow rows, soft deletes and new
    targets); the passages when it is a parent of passages. A changed
    ``edges`` table: the edges.
    """
    by_table = {e.table: e.collection for e in ENTITIES}
    in_relations = {r.source for r in RELATIONS} | {r.target for r in RELATIONS}
    parents = {e.collection for e in passage_parents()}
    out: set[str] = set()
    for table in tables:
        if table == EDGES_TABLE:
            out.add(EDGES_ASSET)
            continue
        collection = by_table[table]
        out.add(collection)
        if collection in in_relations:
            out.add(EDGES_ASSET)
        if collection in parents:
            out.add(PASSAGES_ASSET)
    return sorted(out)


@dg.sensor(
    name=SENSOR_NAME,
    job=jobs.incremental_sync,
    minimum_interval_seconds=SETTINGS.sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One incremental run of the entity types (and edges, passages) whose tables changed "
    "since the last check (TERCUL_SYNC_SENSOR_INTERVAL); nothing while no table changes.",
)
def tercul_changes(context: dg.SensorEvaluationContext, tercul_db: TerculDatabase) -> dg.SensorResult:
    marks = table_marks(tercul_db.engine)
    cursor = json.dumps(marks, sort_keys=True)
    if context.cursor is None:
        # The first check has nothing to compare with: what came before is the schedules' work.
        return dg.SensorResult(skip_reason="first check: recorded where every table stands", cursor=cursor)
    changed = changed_tables(json.loads(context.cursor), marks)
    if not changed:
        return dg.SensorResult(skip_reason="no table changed", cursor=cursor)
    # From both marks: the same tick evaluated again asks for the same run (Dagster launches it once),
    # and a table that returns to an earlier state still gets a new key.
    run_key = hashlib.sha256(f"{context.cursor}\n{cursor}".encode()).hexdigest()[:32]
    request = dg.RunRequest(
        run_key=run_key,
        asset_selection=[dg.AssetKey(a) for a in assets_for(changed)],
        tags={
            **jobs.ALL_SHARDS_TAGS,
            MODE_TAG: INCREMENTAL,
            jobs.TRIGGER_TAG: SENSOR_NAME,
            CHANGED_TAG: ",".join(changed),
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)
