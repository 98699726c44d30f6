"""The `rebuild_collections` job: collections rebuilt behind their aliases (see engine/rebuild.py).

Launched by hand (UI, ``dg launch --job rebuild_collections --config ...``,
or ``tercul-sync rebuild Work``) when a vector's definition changes: a sync
stops with an error that names the job. A sync may run meanwhile: until the
swap its writes go to the old versions, and the catch-up pass after the swap
writes whatever changed in the database during the rebuild.
"""

import dagster as dg
from pydantic import Field

from tercul_sync.defs.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.engine.rebuild import RebuildError, rebuild
from tercul_sync.engine.writing import SyncContext


class RebuildConfig(dg.Config):
    collections: list[str] = Field(
        description="Collections to rebuild, e.g. ['Work']; the collections that reference them come along."
    )
    keep_old: bool = Field(default=False, description="Keep the old versions instead of dropping them.")


@dg.op(description="Build the next version of each collection, verify it, swap the aliases, drop the old.")
def rebuild_collections_op(
    context: dg.OpExecutionContext,
    config: RebuildConfig,
    weaviate: WeaviateResource,
    tercul_db: TerculDatabase,
    sync_settings: SyncSettings,
) -> dg.Output[None]:
    settings = sync_settings.settings()
    ctx = SyncContext(tercul_db.engine, weaviate.client, settings, send=weaviate.send_objects)
    try:
        report = rebuild(ctx, config.collections, keep_old=config.keep_old)
    except RebuildError as exc:  # a refusal or a failed verification: retrying would not help
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(report.summary())
    return dg.Output(
        None,
        metadata={
            "collections": dg.MetadataValue.json(report.plan.new),
            "replaced": dg.MetadataValue.json(report.plan.old),
            "objects_before": dg.MetadataValue.json(report.objects_before),
            "objects_after": dg.MetadataValue.json(report.objects_after),
            "passages_embedded": report.passages_embedded,
            "passages_reused": report.passages_reused,
            "seconds": round(report.seconds, 1),
        },
    )


@dg.job(
    description="Rebuild collections behind their aliases (a new vector definition): readers never see a gap."
)
def rebuild_collections() -> None:
    rebuild_collections_op()
