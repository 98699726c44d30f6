"""Parity checks: after every run, and as the `parity` job, Weaviate is compared with the database.

One asset check per entity type and one on ``passages`` (``parity``, severity ERROR), all run by
one step (``parity_checks``); the engine
(``engine/parity.py``) builds both sides as pandas frames (the database side shard by shard)
and counts missing, orphan and stale objects and wrong reference lists.
Asset jobs include the checks of the assets they select, so ``full_sync``,
``incremental_sync`` and ``orphan_sweep`` end with them, comparing the range digests first and
reading only the ranges that differ; the ``parity`` job runs only the checks, nightly after the
full sync (``TERCUL_SYNC_PARITY_CRON``), and walks every object (config ``walk``).
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from pydantic import Field

from tercul_sync.defs.assets import EDGES_ASSET, PASSAGES_ASSET
from tercul_sync.defs.jobs import TRIGGER_TAG
from tercul_sync.defs.resources import SETTINGS, SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.engine.parity import ParityReport, check_parity, check_passage_parity
from tercul_sync.engine.reading import Shard
from tercul_sync.engine.registry import ENTITIES, EntityType, passage_parents, relations_from

PARITY_CHECK = "parity"
PARITY_STEP = "parity_checks"
# Checks run at once: each waits on PostgreSQL and Weaviate for much of its time, and the passages
# check (the texts cut again) is mostly Python; two overlap one's waits with another's work.
PARITY_THREADS = 2


class ParityConfig(dg.Config):
    walk: bool = Field(
        default=False,
        description="Read every object of each collection instead of comparing the range digests "
        "first (the nightly `parity` job's way: it does not rely on the sums the sync itself uses).",
    )


def _entity_spec(e: EntityType) -> dg.AssetCheckSpec:
    # A source type's references are complete only once the edges step ran: its check waits for it.
    edges = [dg.AssetKey(EDGES_ASSET)] if relations_from(e.collection) else []
    return dg.AssetCheckSpec(
        PARITY_CHECK,
        asset=e.collection,
        additional_deps=edges,
        description=f"`{e.collection}` holds exactly the live rows of `{e.table}`, with references.",
    )


def _passages_spec() -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        PARITY_CHECK,
        asset=PASSAGES_ASSET,
        description="`Passage` holds exactly the passages the live texts give, each with its content.",
    )


def build_parity_checks(shard_count: int, passages: bool) -> dg.AssetChecksDefinition:
    """Every parity check in one step (``parity_checks``), after the assets it compares.

    One step, not one per collection: each step costs Dagster its own events (and, with the
    multiprocess executor, a process), while the checks themselves take a second or two. A run
    that selects some assets runs only their checks (the step subsets itself).
    """
    specs = [_entity_spec(e) for e in ENTITIES] + ([_passages_spec()] if passages else [])
    by_asset = {e.collection: e for e in ENTITIES}

    @dg.multi_asset_check(
        name=PARITY_STEP,
        specs=specs,
        can_subset=True,
        description="Compare each selected collection with its table.",
    )
    def _parity(
        context: dg.AssetCheckExecutionContext,
        config: ParityConfig,
        weaviate: WeaviateResource,
        tercul_db: TerculDatabase,
        sync_settings: SyncSettings,
    ) -> Iterator[dg.AssetCheckResult]:
        shards = [Shard(i, shard_count) for i in range(shard_count)]
        settings = sync_settings.settings()  # the assets' own: they shape the digests compared
        selected = [spec for spec in specs if spec.key in context.selected_asset_check_keys]

        def check(spec: dg.AssetCheckSpec) -> ParityReport:
            name = spec.asset_key.to_user_string()
            if name == PASSAGES_ASSET:
                return check_passage_parity(
                    tercul_db.engine, weaviate.client, shards, settings, walk=config.walk
                )
            e = by_asset[name]
            return check_parity(tercul_db.engine, weaviate.client, e, shards, settings, walk=config.walk)

        with ThreadPoolExecutor(PARITY_THREADS, thread_name_prefix="tercul-parity") as pool:
            # The passages check first: the longest, it overlaps the entity checks.
            order = sorted(selected, key=lambda spec: spec.asset_key.to_user_string() != PASSAGES_ASSET)
            reports = {spec.key: pool.submit(check, spec) for spec in order}
            for spec in selected:
                yield _result(reports[spec.key].result(), spec.asset_key)

    return _parity


def _result(report: ParityReport, asset: dg.AssetKey) -> dg.AssetCheckResult:
    meta = report.as_metadata()
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=PARITY_CHECK,
        passed=report.exact,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.describe(),
        metadata={
            **{k: v for k, v in meta.items() if k != "sample_ids"},
            "sample_ids": dg.MetadataValue.json(meta["sample_ids"]),
        },
    )


parity_checks = build_parity_checks(SETTINGS.shards, SETTINGS.passages and bool(passage_parents()))
parity = dg.define_asset_job(
    "parity",
    selection=dg.AssetSelection.checks(parity_checks),
    config=dg.RunConfig(ops={PARITY_STEP: ParityConfig(walk=True)}),
    description="Compare every collection with its table, object by object (the parity checks alone).",
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
