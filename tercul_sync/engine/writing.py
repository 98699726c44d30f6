"""Writing rows to Weaviate as whole objects: the work inside every step.

One path writes objects, whoever asks: the entity steps (a shard at a time),
the edges step (the source objects whose reference lists it sets) and the
incremental passes (the rows that changed). An object is always written
whole, with its properties and its complete reference lists, so a write
replaces and a re-run never duplicates anything, references included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import weaviate
from sqlalchemy.engine import Engine

from tercul_sync.engine import reading, weaviate_client
from tercul_sync.engine.batching import BatchProcessor, WriteReport
from tercul_sync.engine.objects import HASH_PROPERTY, ObjectWrite, build_object, chunk
from tercul_sync.engine.registry import EntityType, object_uuid, relations_from
from tercul_sync.engine.reports import MAX_SAMPLE, ReasonLog
from tercul_sync.engine.settings import Settings

# Sends one batch of objects to a collection; returns {index: message} for the refused ones.
SendObjects = Callable[[weaviate.WeaviateClient, str, list[ObjectWrite]], dict[int, str]]


@dataclass(frozen=True)
class SyncContext:
    """What every write needs: the database, the Weaviate client, the settings, how to send."""

    db: Engine
    client: weaviate.WeaviateClient
    settings: Settings
    force: bool = False  # rewrite objects even when their content hash is unchanged
    send: SendObjects = weaviate_client.send_objects


@dataclass
class ObjectSyncReport:
    """What syncing one collection did."""

    collection: str
    rows_read: int = 0
    unchanged: int = 0
    references_written: int = 0
    deferred_references: ReasonLog = field(default_factory=ReasonLog)
    write: WriteReport = field(default_factory=WriteReport)


class ObjectSyncer:
    """Writes rows of one entity type as whole objects through the batch processor."""

    def __init__(self, ctx: SyncContext, e: EntityType) -> None:
        self.ctx, self.entity, self.settings = ctx, e, ctx.settings
        self.engine, self.client = ctx.db, ctx.client
        self.report = ObjectSyncReport(e.collection)
        self._processor: BatchProcessor[ObjectWrite] = BatchProcessor(
            lambda items: ctx.send(ctx.client, e.collection, items),
            key_of=lambda o: o.row_id,
            retry=ctx.settings.retry,
        )
        self.report.write = self._processor.report
        self._present: dict[str, set[str]] = {}  # target objects seen to exist during this step

    def sync_shards(self, shards: Iterable[reading.Shard]) -> ObjectSyncReport:
        pages = (
            page
            for shard in shards
            for page in reading.iter_live_pages(self.engine, self.entity, shard, self.settings.batch_size)
        )
        self._pipeline(pages)
        return self.report

    def sync_ids(self, ids: Sequence[int]) -> ObjectSyncReport:
        """Write the live rows among ``ids`` (rows that are not live are left alone)."""
        ordered, size = sorted(set(ids)), self.settings.batch_size
        self._pipeline(
            reading.fetch_live_rows(self.engine, self.entity, ordered[i : i + size])
            for i in range(0, len(ordered), size)
        )
        return self.report

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._write(self._prepare(rows))

    def _pipeline(self, pages: Iterable[Sequence[Mapping[str, Any]]]) -> None:
        """Prepare page k+1 (SQL reads, references, hashes) while page k is being written.

        One helper thread and at most two prepared pages in memory: the read
        and the write overlap, and memory stays bounded by the batch size.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tercul-prepare") as pool:
            pending: Future[list[ObjectWrite]] | None = None
            for page in pages:
                upcoming = pool.submit(self._prepare, page)
                if pending is not None:
                    self._write(pending.result())
                pending = upcoming
            if pending is not None:
                self._write(pending.result())

    def _prepare(self, rows: Sequence[Mapping[str, Any]]) -> list[ObjectWrite]:
        """The objects of ``rows`` that need writing: references resolved, unchanged ones dropped."""
        if not rows:
            return []
        self.report.rows_read += len(rows)
        references = self._references([r["id"] for r in rows])
        objects = [build_object(self.entity, row, references.get(row["id"], {})) for row in rows]
        if self.ctx.force:
            return objects
        stored = weaviate_client.stored_hashes(self.client, self.entity.collection, [o.uuid for o in objects])
        fresh = [o for o in objects if stored.get(o.uuid, "") != o.properties[HASH_PROPERTY]]
        self.report.unchanged += len(objects) - len(fresh)
        return fresh

    def _write(self, objects: list[ObjectWrite]) -> None:
        for batch in chunk(
            objects, self.settings.batch_size, self.settings.max_batch_bytes, lambda o: o.size
        ):
            landed = self._processor.write_batch(batch)
            self.report.references_written += sum(len(v) for o in landed for v in o.references.values())

    def _references(self, ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
        """Each source row's reference lists: live edges to live rows whose object exists.

        An edge whose target row is live but has no object yet (its own sync
        has not run, or failed) is left out and logged as deferred; the edges
        asset writes it once the target exists.
        """
        out: dict[int, dict[str, list[str]]] = {}
        for rel in relations_from(self.entity.collection):
            edges = reading.live_edges_from(self.engine, rel, ids)
            present = self._present.setdefault(rel.target, set())
            unknown = {object_uuid(rel.target, t) for pairs in edges.values() for _, t in pairs} - present
            present |= weaviate_client.existing_uuids(self.client, rel.target, unknown)
            for source_id, pairs in edges.items():
                for edge_id, target_id in pairs:
                    target = object_uuid(rel.target, target_id)
                    if target in present:
                        out.setdefault(source_id, {}).setdefault(rel.name, []).append(target)
                    else:
                        self.report.deferred_references.add("target_not_in_weaviate", edge_id)
        return out


@dataclass
class SweepReport:
    deleted: int = 0
    sample_ids: list[int] = field(default_factory=list)


def sweep_orphans(
    engine: Engine, client: weaviate.WeaviateClient, e: EntityType, shards: Sequence[reading.Shard]
) -> SweepReport:
    """Delete the objects of ``shards`` whose row is gone or soft-deleted.

    The ids stored in Weaviate (``source_id``) are compared with the live ids
    in the database; the difference is deleted in chunks.
    """
    stored = weaviate_client.stored_source_ids(client, e.collection)
    in_scope = {sid: uid for sid, uid in stored.items() if reading.in_shards(sid, shards)}
    live = reading.live_id_set(engine, e, shards)
    orphans = sorted(sid for sid in in_scope if sid not in live)
    report = SweepReport(sample_ids=orphans[:MAX_SAMPLE])
    if orphans:
        report.deleted = weaviate_client.delete_uuids(
            client, e.collection, [in_scope[sid] for sid in orphans]
        )
    return report
