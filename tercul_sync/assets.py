"""The asset factory: one asset per registry entity type, plus the edges asset.

Partitions are stable shards of the id space (``id % shards``), a handful
per table whatever its size, so the UI stays fast and a failed shard can be
re-run alone. Every asset has ``BackfillPolicy.single_run()``: a range of
shards is one step that walks its shards in turn, reading with keyset
pagination and writing in batches of the configured size.
"""

import json
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from tercul_sync import edges as edge_rules
from tercul_sync import incremental, source, weaviate_io
from tercul_sync.batch_writer import WriteReport
from tercul_sync.registry import ENTITIES, RELATIONS, EntityType, entity
from tercul_sync.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.sync import ObjectSyncer, ObjectSyncReport, ReasonLog
from tercul_sync.weaviate_schema import SchemaMismatchError, ensure_schema

GROUP = "tercul"
EDGES_ASSET = "edges"
CHECK_NAME = "no_failed_objects"
MODE_TAG = "tercul_sync/mode"
STEP_RETRY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def shard_keys(count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"shard-{i:0{width}d}" for i in range(count)]


def shard_from_key(key: str, count: int) -> source.Shard:
    try:
        index = int(key.removeprefix("shard-"))
    except ValueError:
        raise ValueError(f"partition key {key!r} is not a shard key like 'shard-0'") from None
    if not 0 <= index < count:
        raise ValueError(f"partition key {key!r} is outside the {count} shards configured by TERCUL_SYNC_SHARDS")
    return source.Shard(index, count)


def shard_partitions(count: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(shard_keys(count))


def _shards(context: dg.AssetExecutionContext, count: int) -> dict[str, source.Shard]:
    """The run's shards by partition key."""
    return {k: shard_from_key(k, count) for k in context.partition_keys}


MODES = (incremental.FULL, incremental.INCREMENTAL, incremental.SWEEP)


class EntitySyncConfig(dg.Config):
    mode: str | None = Field(
        default=None,
        description=(
            "full: every live row, then the orphan sweep. incremental: rows changed since the cursor. sweep: only delete orphans. "
            f"Unset: the run's {MODE_TAG} tag (the jobs set it), else full."
        ),
    )
    force: bool = Field(default=False, description="Rewrite every object, even those whose content hash is unchanged.")


class EdgeSyncConfig(dg.Config):
    batch_size: int | None = Field(
        default=None,
        description="With offset: sync only edge rows offset .. offset+batch_size in id order (the old EnqueueEdgeSync). Unset: all edges.",
    )
    offset: int = Field(default=0, description="First edge row of the window, counted in id order from 0.")
    force: bool = Field(default=False, description="Rewrite every source object, even when unchanged.")
    mode: str | None = Field(
        default=None,
        description=f"full: every source object. incremental: sources of changed edges and targets. Unset: the {MODE_TAG} tag, else full.",
    )


def _mode(context: dg.AssetExecutionContext, configured: str | None, allowed: tuple[str, ...]) -> str:
    """The step's mode: its run config, else the run's mode tag (the jobs carry one), else full.

    A tag, because asset jobs over a partition range do not apply a job's default run config.
    """
    mode = configured or context.run.tags.get(MODE_TAG) or incremental.FULL
    if mode == incremental.SWEEP and incremental.SWEEP not in allowed:
        mode = incremental.FULL  # the edges after a sweep: set every reference list right
    if mode not in allowed:
        raise dg.Failure(description=f"mode {mode!r} is not one of {', '.join(allowed)}", allow_retries=False)
    return mode


def _previous_cursors(context: dg.AssetExecutionContext, asset: str) -> dict[str, dict | None]:
    """Each shard's cursor, from the latest materialization of that shard (Dagster's own records)."""
    out: dict[str, dict | None] = {}
    for key in context.partition_keys:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
        ).records
        value = records[0].asset_materialization.metadata.get("cursor_after") if records else None
        out[key] = (value.value or {}).get(key) if value is not None else None
    return out


def _write_failure_report(settings: SyncSettings, context: dg.AssetExecutionContext, name: str, report: WriteReport) -> str | None:
    """Every failed item with its id and reason, one JSON object a line; the metadata keeps a sample."""
    if not report.failures:
        return None
    path = Path(settings.report_dir) / context.run.run_id / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for f in report.failures:
            fh.write(json.dumps({"asset": name, "id": f.key, "batch": f.batch, "error": f.message}, default=str) + "\n")
    return str(path)


def _reasons_metadata(prefix: str, log: ReasonLog) -> dict[str, object]:
    meta: dict[str, object] = {f"{prefix}_{reason}": n for reason, n in sorted(log.counts.items())}
    if log.samples:
        meta[f"{prefix}_sample_ids"] = dg.MetadataValue.json({k: v for k, v in sorted(log.samples.items())})
    return meta


def _finish(
    context: dg.AssetExecutionContext,
    settings: SyncSettings,
    name: str,
    reports: list[ObjectSyncReport],
    started: float,
    extra: dict[str, object],
) -> dg.MaterializeResult:
    """Metadata, the failure report, and the failure rule: fail above the threshold, warn below it."""
    total = WriteReport()
    deferred = ReasonLog()
    for r in reports:
        total.merge(r.write)
        deferred.merge(r.deferred_references)
    rows_read = sum(r.rows_read for r in reports)
    report_path = _write_failure_report(settings, context, name, total)
    metadata: dict[str, object] = {
        "rows_read": rows_read,
        "objects_written": total.written,
        "objects_failed": total.failed,
        "objects_unchanged": sum(r.unchanged for r in reports),
        "references_written": sum(r.references_written for r in reports),
        "batches": total.batches,
        "failed_batches": total.failed_batches,
        "retried_batches": total.retried_batches,
        "duration_s": round(time.perf_counter() - started, 3),
        "partitions": ", ".join(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else "all",
        **_reasons_metadata("references_deferred", deferred),
        **extra,
    }
    if total.failures:
        metadata["failure_sample"] = dg.MetadataValue.json(total.sample())
        metadata["failure_report"] = dg.MetadataValue.path(report_path)
    rate = total.failed / rows_read if rows_read else 0.0
    # A few refused rows are data problems (WARN check, report); many, or a large share, are a broken sync.
    if rate > settings.max_failure_rate and total.failed >= settings.min_failures_to_fail:
        raise dg.Failure(
            description=(
                f"{name}: {total.failed} of {rows_read} objects failed ({rate:.2%}), above "
                f"TERCUL_SYNC_MAX_FAILURE_RATE={settings.max_failure_rate:.2%} "
                f"(and at least TERCUL_SYNC_MIN_FAILURES_TO_FAIL={settings.min_failures_to_fail}); see {report_path}"
            ),
            metadata=metadata,
            allow_retries=total.gave_up > 0,
        )
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=total.failed == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"objects_failed": total.failed, "failure_rate": rate},
        description=None if total.failed == 0 else f"{total.failed} objects failed; see failure_report",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _ensure_schema(context: dg.AssetExecutionContext, weaviate: WeaviateResource) -> None:
    try:
        for change in ensure_schema(weaviate.client):
            context.log.info(change)
    except SchemaMismatchError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def build_entity_asset(
    e: EntityType, partitions: dg.StaticPartitionsDefinition, shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY
) -> dg.AssetsDefinition:
    # Targets first: a source object written after its targets carries all its references at once.
    targets = sorted({r.target for r in RELATIONS if r.source == e.collection and r.target != e.collection})

    @dg.asset(
        name=e.collection,
        group_name=GROUP,
        kinds={"weaviate", "sql"},
        description=f"Live rows of `{e.table}` as objects of the Weaviate collection `{e.collection}`.",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=f"tercul_sync/{e.collection}",
        retry_policy=retry_policy,
        deps=[dg.AssetDep(t, partition_mapping=dg.AllPartitionMapping()) for t in targets],
        check_specs=[dg.AssetCheckSpec(CHECK_NAME, asset=e.collection, description="Every row landed in Weaviate.")],
    )
    def _entity_asset(
        context: dg.AssetExecutionContext,
        config: EntitySyncConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        mode = _mode(context, config.mode, MODES)
        _ensure_schema(context, weaviate)
        shards = _shards(context, shard_count)
        before = _previous_cursors(context, e.collection)
        run = incremental.run_entity(
            tercul_db.engine,
            weaviate.client,
            e,
            shards,
            mode,
            {k: incremental.Cursor.from_json(v) for k, v in before.items()},
            sync_settings.write_settings(config.force),
            timedelta(seconds=sync_settings.overlap_seconds),
        )
        extra = {
            "mode": mode,
            "rows_changed": run.rows_changed,
            "objects_deleted": run.deleted,
            "deleted_sample_ids": dg.MetadataValue.json(run.deleted_sample),
            "orphan_sweep": run.swept,
            "cursor_before": dg.MetadataValue.json(before),
            "cursor_after": dg.MetadataValue.json(run.cursors),
            "weaviate_object_count": weaviate_io.count_objects(weaviate.client, e.collection),
        }
        return _finish(context, sync_settings, e.collection, [run.report], started, extra)

    return _entity_asset


def build_edges_asset(
    partitions: dg.StaticPartitionsDefinition, shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY
) -> dg.AssetsDefinition:
    @dg.asset(
        name=EDGES_ASSET,
        group_name=GROUP,
        kinds={"weaviate", "sql"},
        description="Live `edges` between live rows as cross-references: sets each source object's reference lists exactly.",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="tercul_sync/edges",
        retry_policy=retry_policy,
        deps=[dg.AssetDep(e.collection, partition_mapping=dg.AllPartitionMapping()) for e in ENTITIES],
        check_specs=[dg.AssetCheckSpec(CHECK_NAME, asset=EDGES_ASSET, description="Every source object carrying references landed.")],
    )
    def edges(
        context: dg.AssetExecutionContext,
        config: EdgeSyncConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        mode = _mode(context, config.mode, (incremental.FULL, incremental.INCREMENTAL))
        _ensure_schema(context, weaviate)
        shards = _shards(context, shard_count)
        settings = sync_settings.write_settings(config.force)
        engine = tercul_db.engine
        before = _previous_cursors(context, EDGES_ASSET)
        if config.batch_size is None:
            run = incremental.run_edges(
                engine,
                weaviate.client,
                shards,
                mode,
                before,
                settings,
                timedelta(seconds=sync_settings.overlap_seconds),
            )
            reports = run.reports
            # An incremental run explains only the edges it saw change; a full run, all of them.
            classification = edge_rules.classify_edges(
                engine, list(shards.values()), None if mode == incremental.FULL else run.changed_edge_ids
            )
            window_meta: dict[str, object] = {
                "window": "all edges",
                "mode": mode,
                "edges_changed": run.edges_changed,
                "reconciled_by_count_check": ", ".join(run.reconciled) or "none",
                "cursor_before": dg.MetadataValue.json(before),
                "cursor_after": dg.MetadataValue.json(run.cursors),
            }
        else:
            try:
                window = edge_rules.EdgeWindow(config.batch_size, config.offset)
            except ValueError as exc:  # a run config mistake: retrying would not help
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            rows = edge_rules.window_edges(engine, window)
            classification = edge_rules.classify_edges(engine, list(shards.values()), [r[0] for r in rows])
            touched = edge_rules.touched_sources(rows, list(shards.values()))
            reports = [
                ObjectSyncer(engine, weaviate.client, entity(c), settings).sync_ids(sorted(ids)) for c, ids in sorted(touched.items())
            ]
            window_meta = {
                "window": f"offset {window.offset}, batch_size {window.batch_size}",
                "window_edge_rows": len(rows),
                "cursor_after": dg.MetadataValue.json(before),  # a window moves no cursor
            }
        extra = {
            "edges_read": classification.edges_read,
            "edges_valid": classification.valid,
            **_reasons_metadata("skipped", classification.skipped),
            **window_meta,
        }
        return _finish(context, sync_settings, EDGES_ASSET, reports, started, extra)

    return edges


def build_assets(shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY) -> list[dg.AssetsDefinition]:
    partitions = shard_partitions(shard_count)
    entities = [build_entity_asset(e, partitions, shard_count, retry_policy) for e in ENTITIES]
    return [*entities, build_edges_asset(partitions, shard_count, retry_policy)]
