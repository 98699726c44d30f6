"""Jobs and schedules: the old queue's tasks (full sync, one entity type, a window of edges) as Dagster jobs.

Every job carries tags that select every shard, so it needs no partition
argument, and a mode tag (``tercul_sync/mode``) that the assets read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from tercul_sync.defs.assets import EDGES_ASSET, GROUP, MODE_TAG
from tercul_sync.defs.partitions import all_shards_tags
from tercul_sync.defs.resources import SETTINGS
from tercul_sync.engine.registry import ENTITIES
from tercul_sync.engine.runs import INCREMENTAL, SWEEP

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

ALL_SHARDS_TAGS = all_shards_tags(SETTINGS.shards)
TRIGGER_TAG = "tercul_sync/trigger"


def _job(
    name: str, selection: dg.AssetSelection, description: str, mode: str | None = None
) -> UnresolvedAssetJobDefinition:
    """An asset job over every shard.

    ``mode`` (full, incremental, sweep) goes in a run tag the assets read.
    """
    tags = {**ALL_SHARDS_TAGS, **({MODE_TAG: mode} if mode else {})}
    return dg.define_asset_job(name, selection=selection, description=description, tags=tags)


def _schedule(
    name: str, job: UnresolvedAssetJobDefinition, cron: str, description: str
) -> dg.ScheduleDefinition:
    """On by default (the daemon runs it); each run covers every shard."""

    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=SETTINGS.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def _tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # Partition-range tags are reserved for run requests, so they are set here, not on the schedule.
        return dg.RunRequest(tags={**(job.tags or {}), TRIGGER_TAG: name})

    return _tick


ALL = dg.AssetSelection.groups(GROUP)
full_sync = _job("full_sync", ALL, "Every entity type, then the edges, over every shard.")
incremental_sync = _job(
    "incremental_sync",
    ALL,
    "Rows and edges changed since the last successful sync, and deletes; every shard.",
    mode=INCREMENTAL,
)
orphan_sweep = _job(
    "orphan_sweep",
    ALL,
    "Delete objects whose row is gone (hard deletes), then set every reference list right.",
    mode=SWEEP,
)
entity_jobs = [
    _job(
        f"sync_{e.collection.lower()}",
        dg.AssetSelection.assets(e.collection),
        f'Only {e.collection} (the old EnqueueEntitySync("{e.collection}")), over every shard.',
    )
    for e in ENTITIES
]
sync_edges = _job(
    "sync_edges",
    dg.AssetSelection.assets(EDGES_ASSET),
    "Only the edges; run config batch_size/offset selects a window (the old EnqueueEdgeSync).",
)

nightly_full_sync = _schedule(
    "nightly_full_sync", full_sync, SETTINGS.full_sync_cron, "Nightly full sync (TERCUL_SYNC_FULL_CRON)."
)
incremental_sync_schedule = _schedule(
    "incremental_sync_schedule",
    incremental_sync,
    SETTINGS.incremental_cron,
    "Incremental sync (TERCUL_SYNC_INCREMENTAL_CRON).",
)
orphan_sweep_schedule = _schedule(
    "orphan_sweep_schedule", orphan_sweep, SETTINGS.sweep_cron, "Orphan sweep (TERCUL_SYNC_SWEEP_CRON)."
)
