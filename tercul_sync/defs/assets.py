"""The asset factory: one asset per registry entity type, plus the edges asset.

Assets are thin: each reads its config, calls one engine function
(``engine.runs``) and turns the outcome into metadata, an asset check and,
when the failure rule says so, a failed step. Every asset has
``BackfillPolicy.single_run()``: a range of shards is one step, which reads the
shards it reads whole as one stream of pages (``engine.runs.run_entity``).
"""

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import dagster as dg
from pydantic import Field

from tercul_sync.defs.partitions import backfill_policy, shard_from_key, shard_partitions
from tercul_sync.defs.resources import SETTINGS, SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.edges import EdgeWindow
from tercul_sync.engine.errors import WritesRefusedError
from tercul_sync.engine.passages import passages_metadata
from tercul_sync.engine.registry import (
    ENTITIES,
    PASSAGE_COLLECTION,
    RELATIONS,
    EntityType,
    edge_sources,
    edge_targets,
    passage_parents,
)
from tercul_sync.engine.reports import FailureRule
from tercul_sync.engine.weaviate_schema import SchemaMismatchError
from tercul_sync.engine.writing import ObjectSyncReport, SyncContext

GROUP = "tercul"
EDGES_ASSET = "edges"
PASSAGES_ASSET = "passages"
CHECK_NAME = "no_failed_objects"
VECTOR_CHECK = "vectors_present"
MODE_TAG = "tercul_sync/mode"
VECTOR_CHECK_TEXT = "Objects written by the step carry every named vector they should (a sample, read back)."
# At most this many records of a target asset are read for its removed ids (one per shard and step).
REMOVED_RECORDS = 200
STEP_RETRY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class EntitySyncConfig(dg.Config):
    mode: str | None = Field(
        default=None,
        description=(
            "full: every live row, then the orphan sweep. incremental: rows changed since the cursor. "
            "sweep: only delete orphans. "
            f"Unset: the run's {MODE_TAG} tag (the jobs set it), else full."
        ),
    )
    force: bool = Field(
        default=False, description="Rewrite every object, even those whose content hash is unchanged."
    )


class EntityRowsConfig(EntitySyncConfig):
    ids: list[int] | None = Field(
        default=None,
        description="Sync exactly these row ids now (the old queue's row task, `enqueue_rows`): write the "
        "live ones, delete the objects of the others; no cursor moves. Excludes mode.",
    )


class EdgeSyncConfig(dg.Config):
    batch_size: int | None = Field(
        default=None,
        description="With offset: sync only edge rows offset .. offset+batch_size in id order "
        "(the old EnqueueEdgeSync). Unset: all edges.",
    )
    offset: int = Field(default=0, description="First edge row of the window, counted in id order from 0.")
    force: bool = Field(default=False, description="Rewrite every source object, even when unchanged.")
    mode: str | None = Field(
        default=None,
        description="full: every source object. incremental: sources of changed edges and targets. "
        f"Unset: the {MODE_TAG} tag, else full.",
    )


def _no_retry(exc: Exception) -> dg.Failure:
    """A mistake that retrying would not mend (run config, schema)."""
    return dg.Failure(description=str(exc), allow_retries=False)


def _refused(exc: Exception) -> None:
    """Raise Weaviate's refusal for lack of a permission as a Failure that is not retried (it would
    fail again); return for any other error, which the caller re-raises."""
    denied = weaviate_client.as_access_denied(exc)
    if denied is not None:
        raise _no_retry(denied) from exc


def _previous_cursors(context: dg.AssetExecutionContext, asset: str) -> dict[str, Any]:
    """Each shard's cursor, from the latest materialization of that shard (Dagster's own records)."""
    out: dict[str, Any] = {}
    for key in context.partition_keys:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
        ).records
        mat = records[0].asset_materialization if records else None
        value = mat.metadata.get("cursor_after") if mat is not None else None
        out[key] = (
            (value.value or {}).get(key)
            if isinstance(value, dg.JsonMetadataValue) and isinstance(value.value, dict)
            else None
        )
    return out


def _removed_since_edges(context: dg.AssetExecutionContext) -> dict[str, list[int]]:
    """``{collection: ids}`` of the rows the target assets removed (their row gone) since the edges
    asset's latest materialization: the ``removed_ids`` of each of their materializations since.

    A target asset whose records since are too many to read, or which named only some of its
    removals, is left out: the edges step's count check finds those sources instead.
    """
    instance = context.instance
    last = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(EDGES_ASSET)), limit=1)
    if not last.records:
        return {}
    since = last.records[0].storage_id
    out: dict[str, list[int]] = {}
    for t in edge_targets():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(t.collection), after_storage_id=since),
            limit=REMOVED_RECORDS,
        ).records
        if len(records) >= REMOVED_RECORDS:
            continue
        ids: set[int] = set()
        for record in records:
            md = record.asset_materialization.metadata if record.asset_materialization else {}
            named, count = md.get("removed_ids"), md.get("objects_removed_as_orphans")
            values = named.value if isinstance(named, dg.JsonMetadataValue) else None
            total = count.value if isinstance(count, dg.IntMetadataValue) else 0
            if not isinstance(values, list) or len(values) != total:
                break  # some removals unnamed: leave this target to the count check
            ids.update(int(i) for i in values)
        else:
            if ids:
                out[t.collection] = sorted(ids)
    return out


def _written_whole_in_this_run(
    context: dg.AssetExecutionContext, collections: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Of ``collections``, the types whose entity step ran earlier in this run, in full mode over
    every shard, and failed no row: every live row had an object when it ended. With the metadata of
    that step (every shard's materialization carries it), read from each one's latest
    materialization; a type synced in another run, or not at all, is left out."""
    partitions = context.assets_def.partitions_def
    every_shard = set(partitions.get_partition_keys()) if partitions is not None else set()
    out = {}
    for collection in collections:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(collection)), limit=1
        ).records
        if not records or records[0].run_id != context.run.run_id or records[0].asset_materialization is None:
            continue
        values = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
        shards = set(str(values.get("partitions", "")).split(", "))
        if values.get("mode") == runs.FULL and shards >= every_shard and values.get("objects_failed") == 0:
            out[collection] = values
    return out


def _compared_again_not_needed(context: dg.AssetExecutionContext) -> list[str]:
    """Source types ``runs.run_edges`` need not compare by reference digests again: written whole
    in this run (``_written_whole_in_this_run``) with no reference deferred."""
    whole = _written_whole_in_this_run(context, [e.collection for e in edge_sources()])
    return [
        collection
        for collection, values in whole.items()
        if not any(
            int(v) for k, v in values.items() if k.startswith("references_deferred_") and isinstance(v, int)
        )
    ]


def _trusted_targets(context: dg.AssetExecutionContext, targets: Iterable[str]) -> frozenset[str]:
    """Of an entity's ``targets``, those written whole earlier in this run (``SyncContext.trusted``)."""
    return frozenset(_written_whole_in_this_run(context, targets))


def _as_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain engine values as Dagster metadata (lists and dicts as JSON, the report as a path)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "failure_report":
            out[key] = dg.MetadataValue.path(value)
        elif isinstance(value, list | dict):
            out[key] = dg.MetadataValue.json(value)
        else:
            out[key] = value
    return out


ENTITY_COLLECTIONS = frozenset(e.collection for e in ENTITIES)


def _step(
    context: dg.AssetExecutionContext,
    name: str,
    weaviate: WeaviateResource,
    tercul_db: TerculDatabase,
    sync_settings: SyncSettings,
    force: bool,
    work: Callable[[SyncContext, dict[str, Any]], tuple[list[ObjectSyncReport], dict[str, Any]]],
) -> dg.MaterializeResult:
    """The frame every asset shares: schema, shards, the engine call, the failure rule, metadata."""
    started = time.perf_counter()
    settings = sync_settings.settings()
    try:
        # Before anything is written: the tables match the registry and may be read.
        reading.check_source(tercul_db.engine, reading.tables_read_by(name))
        # An entity step needs its own collection; edges and passages need them all.
        changes = weaviate.ensure_schema(settings, [name] if name in ENTITY_COLLECTIONS else None)
        if changes:  # one log line: each is an event Dagster stores, a write of its own
            context.log.info("schema: " + "; ".join(changes))
    except (SchemaMismatchError, reading.SourceSchemaError, reading.SourceAccessError) as exc:
        raise _no_retry(exc) from exc
    except Exception as exc:
        _refused(exc)
        raise
    ctx = SyncContext(tercul_db.engine, weaviate.client, settings, force=force, send=weaviate.send_objects)
    # The asset's own shard count (build_assets' shard_count), not TERCUL_SYNC_SHARDS read again here.
    partitions = context.assets_def.partitions_def
    assert partitions is not None  # every asset of this location is sharded
    count = len(partitions.get_partition_keys())
    shards = {k: shard_from_key(k, count) for k in context.partition_keys}
    try:
        reports, extra = work(ctx, shards)
    except WritesRefusedError as exc:  # a read-only shard: lasts until an operator acts, so no retry
        raise dg.Failure(description=f"{name}: {exc}", allow_retries=False) from exc
    except Exception as exc:
        _refused(exc)
        raise
    vector_meta = runs.check_vectors(ctx, reports)
    extra = {
        **vector_meta,
        **extra,
        "duration_s": round(time.perf_counter() - started, 3),
        "partitions": ", ".join(context.partition_keys),
    }
    rule = FailureRule(settings.max_failure_rate, settings.min_failures_to_fail)
    outcome = runs.summarize(
        name, reports, extra, rule, settings.report_dir / context.run.run_id / f"{name}.jsonl"
    )
    metadata = _as_metadata(outcome.metadata)
    if outcome.failure:
        raise dg.Failure(description=outcome.failure, metadata=metadata, allow_retries=outcome.retryable)
    failed = outcome.objects_failed
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=failed == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"objects_failed": failed},
        description=None if failed == 0 else f"{failed} objects failed; see failure_report",
    )
    vectors = dg.AssetCheckResult(
        check_name=VECTOR_CHECK,
        passed=vector_meta["vectors_missing"] == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=_as_metadata(vector_meta),
        description=None
        if vector_meta["vectors_missing"] == 0
        else "written objects lack vectors they should have",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check, vectors])


def _mode(context: dg.AssetExecutionContext, configured: str | None, allowed: tuple[str, ...]) -> str:
    # A run tag, because asset jobs over a partition range do not apply a job's default run config.
    try:
        return runs.resolve_mode(configured, context.run.tags.get(MODE_TAG), allowed)
    except ValueError as exc:
        raise _no_retry(exc) from exc


def _asset(
    name: str,
    description: str,
    after: list[str],
    landed: str,
    shard_count: int,
    retry_policy: dg.RetryPolicy,
) -> Callable[[Callable[..., dg.MaterializeResult]], dg.AssetsDefinition]:
    """The decorator every tercul_sync asset shares: group, kinds, shards, single-run backfills, a pool
    of its own, the step retry, the assets it waits for (every shard of each), and its two checks."""
    return dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"weaviate", "sql"},
        description=description,
        partitions_def=shard_partitions(shard_count),
        backfill_policy=backfill_policy(SETTINGS.backfill_policy),
        pool=f"tercul_sync/{name}",
        retry_policy=retry_policy,
        deps=[dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in after],
        check_specs=[
            dg.AssetCheckSpec(CHECK_NAME, asset=name, description=landed),
            dg.AssetCheckSpec(VECTOR_CHECK, asset=name, description=VECTOR_CHECK_TEXT),
        ],
    )


def build_entity_asset(
    e: EntityType, shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY
) -> dg.AssetsDefinition:
    # Targets first: a source object written after its targets carries all its references at once.
    targets = sorted({r.target for r in RELATIONS if r.source == e.collection and r.target != e.collection})

    @_asset(
        e.collection,
        f"Live rows of `{e.table}` as objects of the Weaviate collection `{e.collection}`.",
        targets,
        "Every row landed in Weaviate.",
        shard_count,
        retry_policy,
    )
    def _entity_asset(
        context: dg.AssetExecutionContext,
        config: EntityRowsConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> dg.MaterializeResult:
        ids = config.ids
        if ids is not None and config.mode is not None:
            raise _no_retry(ValueError("run config: give ids or mode, not both"))
        mode = runs.IDS if ids is not None else _mode(context, config.mode, runs.ENTITY_MODES)
        before = _previous_cursors(context, e.collection)

        trusted = _trusted_targets(context, targets) if mode == runs.FULL else frozenset()

        def work(ctx: SyncContext, shards: dict[str, Any]) -> tuple[list[ObjectSyncReport], dict[str, Any]]:
            if ids is not None:
                run = runs.run_entity_ids(ctx, e, shards, ids, before)
            else:
                run = runs.run_entity(replace(ctx, trusted=trusted), e, shards, mode, before)
            # the targets whose existence was not checked reference by reference (SyncContext.trusted)
            return [run.report], {
                **run.metadata(mode, before),
                "targets_trusted": ", ".join(sorted(trusted)) or "none",
            }

        return _step(context, e.collection, weaviate, tercul_db, sync_settings, config.force, work)

    return _entity_asset


def build_edges_asset(shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY) -> dg.AssetsDefinition:
    @_asset(
        EDGES_ASSET,
        "Live `edges` between live rows as cross-references: "
        "sets each source object's reference lists exactly.",
        [e.collection for e in ENTITIES],
        "Every source object carrying references landed.",
        shard_count,
        retry_policy,
    )
    def edges(
        context: dg.AssetExecutionContext,
        config: EdgeSyncConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> dg.MaterializeResult:
        mode = _mode(context, config.mode, runs.EDGE_MODES)
        before = _previous_cursors(context, EDGES_ASSET)
        removed = _removed_since_edges(context) if mode == runs.INCREMENTAL else {}
        whole = _compared_again_not_needed(context) if mode == runs.FULL else []
        work: Callable[[SyncContext, dict[str, Any]], tuple[list[ObjectSyncReport], dict[str, Any]]]
        if config.batch_size is None:
            work = lambda ctx, s: runs.edges_step(ctx, s, mode, before, removed, whole)  # noqa: E731
        else:
            try:
                window = EdgeWindow(config.batch_size, config.offset)
            except ValueError as exc:
                raise _no_retry(exc) from exc
            work = lambda ctx, s: runs.edge_window_step(ctx, s, window, before)  # noqa: E731
        return _step(context, EDGES_ASSET, weaviate, tercul_db, sync_settings, config.force, work)

    return edges


def build_passages_asset(shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY) -> dg.AssetsDefinition:
    parents = [e.collection for e in passage_parents()]

    # After its parents (a passage refers to its parent's object) and after `edges`: the catalog's
    # objects and references are whole first, and the passages, a derived index (embedded on the
    # CPU with a local model), do not share the machine with the edges step (docs/passages.md).
    @_asset(
        PASSAGES_ASSET,
        f"Long texts of {', '.join(parents)} as passages, objects of `{PASSAGE_COLLECTION}`.",
        [*parents, EDGES_ASSET],
        "Every passage landed in Weaviate.",
        shard_count,
        retry_policy,
    )
    def passages(
        context: dg.AssetExecutionContext,
        config: EntitySyncConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> dg.MaterializeResult:
        mode = _mode(context, config.mode, runs.ENTITY_MODES)
        before = _previous_cursors(context, PASSAGES_ASSET)

        def work(ctx: SyncContext, shards: dict[str, Any]) -> tuple[list[ObjectSyncReport], dict[str, Any]]:
            report, cursors = runs.run_passages(ctx, shards, mode, before)
            meta = {
                **passages_metadata(report),
                "mode": mode,
                "cursor_before": before,
                "cursor_after": cursors,
            }
            return [report.as_sync_report()], meta

        return _step(context, PASSAGES_ASSET, weaviate, tercul_db, sync_settings, config.force, work)

    return passages


def build_assets(
    shard_count: int, retry_policy: dg.RetryPolicy = STEP_RETRY, passages: bool = True
) -> list[dg.AssetsDefinition]:
    entities = [build_entity_asset(e, shard_count, retry_policy) for e in ENTITIES]
    extra = [build_passages_asset(shard_count, retry_policy)] if passages and passage_parents() else []
    return [*entities, build_edges_asset(shard_count, retry_policy), *extra]


# The location's assets, one partition per configured shard (TERCUL_SYNC_SHARDS).
assets = build_assets(SETTINGS.shards, passages=SETTINGS.passages)
