"""Parity checks: after every run, and as the `parity` job, Weaviate is compared with the database.

One asset check per entity type and one on ``passages`` (``parity``, severity ERROR); the engine
(``engine/parity.py``) builds both sides as pandas frames, shard by shard,
and counts missing, orphan and stale objects and wrong reference lists.
Asset jobs include the checks of the assets they select, so ``full_sync``,
``incremental_sync`` and ``orphan_sweep`` end with them; the ``parity`` job
runs only the checks, nightly after the full sync (``TERCUL_SYNC_PARITY_CRON``).
"""

import dagster as dg

from tercul_sync.defs.assets import EDGES_ASSET, PASSAGES_ASSET
from tercul_sync.defs.jobs import TRIGGER_TAG
from tercul_sync.defs.resources import SETTINGS, TerculDatabase, WeaviateResource
from tercul_sync.engine.parity import ParityReport, check_parity, check_passage_parity
from tercul_sync.engine.reading import Shard
from tercul_sync.engine.registry import ENTITIES, EntityType, passage_parents, relations_from

PARITY_CHECK = "parity"


def build_parity_check(e: EntityType, shard_count: int) -> dg.AssetChecksDefinition:
    # A source type's references are complete only once the edges step ran: its check waits for it.
    edges = [dg.AssetKey(EDGES_ASSET)] if relations_from(e.collection) else []

    @dg.asset_check(
        asset=e.collection,
        name=PARITY_CHECK,
        additional_deps=edges,
        description=f"`{e.collection}` holds exactly the live rows of `{e.table}`, with references.",
    )
    def _parity(weaviate: WeaviateResource, tercul_db: TerculDatabase) -> dg.AssetCheckResult:
        shards = [Shard(i, shard_count) for i in range(shard_count)]
        return _result(check_parity(tercul_db.engine, weaviate.client, e, shards))

    return _parity


def build_passage_parity_check(shard_count: int) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=PASSAGES_ASSET,
        name=PARITY_CHECK,
        description="`Passage` holds exactly the passages the live texts give, each with its content.",
    )
    def _passage_parity(weaviate: WeaviateResource, tercul_db: TerculDatabase) -> dg.AssetCheckResult:
        shards = [Shard(i, shard_count) for i in range(shard_count)]
        return _result(check_passage_parity(tercul_db.engine, weaviate.client, shards))

    return _passage_parity


def _result(report: ParityReport) -> dg.AssetCheckResult:
    meta = report.as_metadata()
    return dg.AssetCheckResult(
        passed=report.exact,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.describe(),
        metadata={
            **{k: v for k, v in meta.items() if k != "sample_ids"},
            "sample_ids": dg.MetadataValue.json(meta["sample_ids"]),
        },
    )


parity_checks = [build_parity_check(e, SETTINGS.shards) for e in ENTITIES]
if SETTINGS.passages and passage_parents():
    parity_checks.append(build_passage_parity_check(SETTINGS.shards))
parity = dg.define_asset_job(
    "parity",
    selection=dg.AssetSelection.checks(*parity_checks),
    description="Compare every collection with its table (the parity checks alone).",
)


@dg.schedule(
    job=parity,
    cron_schedule=SETTINGS.parity_cron,
    execution_timezone=SETTINGS.schedule_timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Parity check of every collection (TERCUL_SYNC_PARITY_CRON).",
)
def parity_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(tags={TRIGGER_TAG: "parity_schedule"})
