"""The Dagster code location: assets, jobs, schedules and resources.

Load it with ``dagster dev -w workspace.yaml``, ``dagster job execute -m
tercul_sync.definitions -j full_sync`` or ``dg launch --job full_sync``.
"""

import os

import dagster as dg

from tercul_sync.assets import EDGES_ASSET, build_assets, shard_keys
from tercul_sync.registry import ENTITIES
from tercul_sync.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.settings import load_settings

settings = load_settings()
SHARD_KEYS = shard_keys(settings.shards)
# A run over every shard at once: with single-run backfill policies this is one step per asset.
ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": SHARD_KEYS[0],
    "dagster/asset_partition_range_end": SHARD_KEYS[-1],
}

assets = build_assets(settings.shards)

full_sync = dg.define_asset_job(
    "full_sync",
    selection=dg.AssetSelection.groups("tercul"),
    description="Every entity type, then the edges, over every shard.",
    tags=ALL_SHARDS_TAGS,
)
entity_jobs = [
    dg.define_asset_job(
        f"sync_{e.collection.lower()}",
        selection=dg.AssetSelection.assets(e.collection),
        description=f'Only {e.collection} (the old EnqueueEntitySync("{e.collection}")), over every shard.',
        tags=ALL_SHARDS_TAGS,
    )
    for e in ENTITIES
]
incremental_sync = dg.define_asset_job(
    "incremental_sync",
    selection=dg.AssetSelection.groups("tercul"),
    description="Rows and edges changed since the last successful sync, and deletes; every shard.",
    tags=ALL_SHARDS_TAGS,
    config={"ops": {name: {"config": {"mode": "incremental"}} for name in [*(e.collection for e in ENTITIES), EDGES_ASSET]}},
)
orphan_sweep = dg.define_asset_job(
    "orphan_sweep",
    selection=dg.AssetSelection.groups("tercul"),
    description="Delete objects whose row is gone (hard deletes), then set every reference list right.",
    tags=ALL_SHARDS_TAGS,
    config={"ops": {e.collection: {"config": {"mode": "sweep"}} for e in ENTITIES}},
)
sync_edges = dg.define_asset_job(
    "sync_edges",
    selection=dg.AssetSelection.assets(EDGES_ASSET),
    description="Only the edges; run config batch_size/offset selects a window (the old EnqueueEdgeSync).",
    tags=ALL_SHARDS_TAGS,
)


@dg.schedule(
    job=full_sync,
    cron_schedule=settings.full_sync_cron,
    execution_timezone=settings.schedule_timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly full sync (TERCUL_SYNC_FULL_CRON, default 02:00 in TERCUL_SYNC_TIMEZONE, default UTC).",
)
def nightly_full_sync(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(tags={**ALL_SHARDS_TAGS, "tercul_sync/trigger": "nightly_full_sync"})


@dg.schedule(
    job=incremental_sync,
    cron_schedule=settings.incremental_cron,
    execution_timezone=settings.schedule_timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Incremental sync (TERCUL_SYNC_INCREMENTAL_CRON, default every 10 minutes).",
)
def incremental_sync_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(tags={**ALL_SHARDS_TAGS, "tercul_sync/trigger": "incremental_sync_schedule"})


@dg.schedule(
    job=orphan_sweep,
    cron_schedule=settings.sweep_cron,
    execution_timezone=settings.schedule_timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Orphan sweep for hard deletes (TERCUL_SYNC_SWEEP_CRON, default hourly at :30).",
)
def orphan_sweep_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(tags={**ALL_SHARDS_TAGS, "tercul_sync/trigger": "orphan_sweep_schedule"})


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
