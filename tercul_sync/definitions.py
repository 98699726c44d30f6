"""The Dagster code location: assets, jobs, schedules and resources.

Load it with ``dagster dev -w workspace.yaml``, ``dagster job execute -m
tercul_sync.definitions -j full_sync`` or ``dg launch --job full_sync``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dagster as dg

from tercul_sync.assets import EDGES_ASSET, MODE_TAG, build_assets, shard_keys
from tercul_sync.registry import ENTITIES
from tercul_sync.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.settings import load_settings

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

settings = load_settings()
SHARD_KEYS = shard_keys(settings.shards)
# A run over every shard at once: with single-run backfill policies this is one step per asset.
ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": SHARD_KEYS[0],
    "dagster/asset_partition_range_end": SHARD_KEYS[-1],
}

assets = build_assets(settings.shards)


def _job(name: str, selection: dg.AssetSelection, description: str, mode: str | None = None) -> UnresolvedAssetJobDefinition:
    """An asset job over every shard; ``mode`` (full, incremental, sweep) goes in a run tag the assets read."""
    tags = {**ALL_SHARDS_TAGS, **({MODE_TAG: mode} if mode else {})}
    return dg.define_asset_job(name, selection=selection, description=description, tags=tags)


ALL = dg.AssetSelection.groups("tercul")
full_sync = _job("full_sync", ALL, "Every entity type, then the edges, over every shard.")
incremental_sync = _job(
    "incremental_sync",
    ALL,
    "Rows and edges changed since the last successful sync, and deletes; every shard.",
    mode="incremental",
)
orphan_sweep = _job(
    "orphan_sweep",
    ALL,
    "Delete objects whose row is gone (hard deletes), then set every reference list right.",
    mode="sweep",
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


def _schedule(name: str, job: UnresolvedAssetJobDefinition, cron: str, description: str) -> dg.ScheduleDefinition:
    """On by default (the daemon runs it); each run covers every shard."""

    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=settings.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def _tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # Partition-range tags are reserved for run requests, so they are set here, not on the schedule.
        return dg.RunRequest(tags={**job.tags, "tercul_sync/trigger": name})

    return _tick


nightly_full_sync = _schedule("nightly_full_sync", full_sync, settings.full_sync_cron, "Nightly full sync (TERCUL_SYNC_FULL_CRON).")
incremental_sync_schedule = _schedule(
    "incremental_sync_schedule", incremental_sync, settings.incremental_cron, "Incremental sync (TERCUL_SYNC_INCREMENTAL_CRON)."
)
orphan_sweep_schedule = _schedule("orphan_sweep_schedule", orphan_sweep, settings.sweep_cron, "Orphan sweep (TERCUL_SYNC_SWEEP_CRON).")


def _database_url() -> str | dg.EnvVar:
    # EnvVar keeps the URL (and its password) out of the UI and the run config.
    return dg.EnvVar("TERCUL_DATABASE_URL") if os.environ.get("TERCUL_DATABASE_URL") else settings.demo_database_url


resources = {
    "weaviate": WeaviateResource(
        url=settings.weaviate_url,
        grpc_port=settings.weaviate_grpc_port,
        api_key=dg.EnvVar("WEAVIATE_API_KEY") if os.environ.get("WEAVIATE_API_KEY") else None,
    ),
    "tercul_db": TerculDatabase(url=_database_url()),
    "sync_settings": SyncSettings(
        batch_size=settings.batch_size,
        max_batch_bytes=settings.max_batch_bytes,
        max_failure_rate=settings.max_failure_rate,
        min_failures_to_fail=settings.min_failures_to_fail,
        retry_attempts=settings.retry_attempts,
        overlap_seconds=settings.overlap_seconds,
        report_dir=str(settings.report_dir),
    ),
}

# Steps run in their own processes (one Weaviate client each, nothing crosses a fork); a forkserver
# that has already imported the code location starts each step in well under a second.
executor = dg.multiprocess_executor.configured(
    {"max_concurrent": 4, "start_method": {"forkserver": {"preload_modules": ["tercul_sync.definitions"]}}}
)

defs = dg.Definitions(
    executor=executor,
    assets=assets,
    jobs=[full_sync, incremental_sync, orphan_sweep, *entity_jobs, sync_edges],
    schedules=[nightly_full_sync, incremental_sync_schedule, orphan_sweep_schedule],
    resources=resources,
)
