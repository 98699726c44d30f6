"""A step's work in one of its modes, and what it reports: the engine's entry points.

Each Dagster asset calls exactly one of ``run_entity``, ``run_edges`` or
``run_edge_window`` and turns the ``StepOutcome`` it returns into metadata.

- full: every live row of each shard, then the orphan sweep;
- incremental: rows changed since each shard's cursor, and deletes (soft
  ones by cursor, hard ones by a count check and a sweep when counts differ);
- sweep: only delete objects whose row is gone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tercul_sync.engine import delete_log, digest_ranges, digests, reading, weaviate_client
from tercul_sync.engine import edges as edge_rules
from tercul_sync.engine.batching import WriteReport
from tercul_sync.engine.changes import (
    Cursor,
    changed_edges,
    changed_target_ids,
    high_water,
    iter_changed_pages,
    reference_count_table,
    soft_deleted_since,
    sources_pointing_at,
    valid_reference_count,
    valid_reference_counts,
)
from tercul_sync.engine.embedding import EmbedStats
from tercul_sync.engine.passages import PassageReport, PassageSyncer, passage_parent_id
from tercul_sync.engine.reconcile import WALK_SHARE, bisect_mismatches
from tercul_sync.engine.registry import (
    EDGES_TABLE,
    PASSAGE_COLLECTION,
    EntityType,
    edge_sources,
    edge_targets,
    entity,
    object_uuid,
    passage_parents,
)
from tercul_sync.engine.reports import MAX_SAMPLE, FailureRule, ReasonLog, add_sample, write_failure_report
from tercul_sync.engine.writing import ObjectSyncer, ObjectSyncReport, SyncContext, sweep_orphans

FULL, INCREMENTAL, SWEEP = "full", "incremental", "sweep"
IDS = "ids"  # the mode an entity step reports when its run config chose the rows (run_entity_ids)
ENTITY_MODES = (FULL, INCREMENTAL, SWEEP)
EDGE_MODES = (FULL, INCREMENTAL)

Shards = Mapping[str, reading.Shard]  # partition key -> shard
# Ids of objects an entity step removed because their row was gone, named in its metadata for the
# edges step (``run_edges``' ``removed``); a step that removed more names none of them.
REMOVED_KEPT = 1_000
CursorJson = dict[str, Any] | None


@dataclass
class StepOutcome:
    """What one step did: its metadata (plain values), its failures, and whether it must fail."""

    metadata: dict[str, Any]
    write: WriteReport
    failure: str | None = None  # why the step fails, or None
    retryable: bool = False  # whether retrying the step could help (failures were transient)

    @property
    def objects_failed(self) -> int:
        return self.write.failed


def summarize(
    name: str,
    reports: list[ObjectSyncReport],
    extra: Mapping[str, Any],
    rule: FailureRule,
    report_path: Path,
) -> StepOutcome:
    """Sum the reports, write the failure file, and apply the failure rule."""
    total, deferred = WriteReport(), ReasonLog()
    for r in reports:
        total.merge(r.write)
        deferred.merge(r.deferred_references)
    rows_read = sum(r.rows_read for r in reports)
    matched = sum(r.rows_matched_by_digest for r in reports)
    embeds = EmbedStats()
    for r in reports:
        embeds.merge(r.embeddings)
    written_to = write_failure_report(report_path, name, total.failures)
    metadata: dict[str, Any] = {
        "rows_read": rows_read,
        # full runs: live rows in ranges whose digests matched Weaviate's, so not read (digests.py)
        "rows_matched_by_digest": matched,
        "digest_ranges_read": sum(r.digest_ranges_read for r in reports),
        "objects_written": total.written,
        "objects_failed": total.failed,
        "objects_unchanged": sum(r.unchanged for r in reports),
        "objects_reindexed": sum(r.reindexed for r in reports),
        # rows Weaviate refused for a missing reference target, prepared again with the target checked
        "rows_rechecked": sum(r.rechecked_rows for r in reports),
        "references_written": sum(r.references_written for r in reports),
        "batches": total.batches,
        "failed_batches": total.failed_batches,
        "retried_batches": total.retried_batches,
        "texts_embedded": embeds.texts,
        "embeddings_reused": sum(r.embeddings_reused for r in reports),
        "embedding_seconds": round(embeds.seconds, 3),
        "embedding_requests": embeds.requests,
        "embedding_retries": embeds.retries,
        "embedding_tokens": embeds.tokens,
        **deferred.as_metadata("references_deferred"),
        **extra,
    }
    if written_to is not None:
        metadata["failure_sample"] = total.sample()
        metadata["failure_report"] = str(written_to)
    verdict = rule.verdict(total.failed, rows_read + matched)
    failure = f"{name}: {verdict}; see {written_to}" if verdict else None
    return StepOutcome(metadata, total, failure, retryable=total.gave_up > 0)


def check_vectors(ctx: SyncContext, reports: list[ObjectSyncReport]) -> dict[str, Any]:
    """Read back the sampled written objects and list those lacking a vector they should carry."""
    checked, missing = 0, []
    for r in reports:
        if not r.vector_sample:
            continue
        names = sorted({n for _, expected in r.vector_sample for n in expected})
        stored = weaviate_client.stored_vectors(
            ctx.client, ctx.collection(r.collection), [u for u, _ in r.vector_sample], names
        )
        for uuid, expected in r.vector_sample:
            checked += 1
            have = stored.get(uuid, (None, {}))[1]
            if any(n not in have for n in expected):
                missing.append(f"{r.collection}/{uuid}")
    return {
        "vectors_checked": checked,
        "vectors_missing": len(missing),
        "vectors_missing_sample": missing[:MAX_SAMPLE],
    }


# --- entity steps ------------------------------------------------------------------------


@dataclass
class EntityRun:
    """The outcome of one entity step, whatever its mode."""

    report: ObjectSyncReport
    rows_changed: int = 0
    deleted: int = 0
    deleted_sample: list[Any] = field(default_factory=list)
    swept: bool = False
    cursors: dict[str, CursorJson] = field(default_factory=dict)
    object_count: int = 0  # objects in the collection when the step ended
    removed: list[int] = field(default_factory=list)  # ids of objects deleted because their row was gone
    logged_removals: int = 0  # objects deleted because the delete log named their rows (delete_log.py)
    unmatched: list[str] = field(default_factory=list)  # uuids deleted that the id filter did not find

    def metadata(self, mode: str, previous: Mapping[str, CursorJson]) -> dict[str, Any]:
        return {
            "mode": mode,
            "rows_changed": self.rows_changed,
            "objects_deleted": self.deleted,
            "deleted_sample_ids": self.deleted_sample,
            # Every one when there are few: the edges step rewrites the sources that pointed at them.
            "objects_removed_as_orphans": len(self.removed),
            "objects_removed_by_delete_log": self.logged_removals,
            "removed_ids": self.removed if len(self.removed) <= REMOVED_KEPT else [],
            "orphan_sweep": self.swept,
            "cursor_before": dict(previous),
            "cursor_after": self.cursors,
            "weaviate_object_count": self.object_count,
        }


def _first_sync(ctx: SyncContext, collection: str, mode: str) -> bool:
    """A full run into an empty collection: nothing stored to read back or compare with."""
    return mode == FULL and weaviate_client.count_objects(ctx.client, ctx.collection(collection)) == 0


def run_entity(
    ctx: SyncContext, e: EntityType, shards: Shards, mode: str, previous: Mapping[str, CursorJson]
) -> EntityRun:
    """Sync one entity type over ``shards`` in ``mode``, starting from each shard's ``previous`` cursor.

    A shard's cursor moves unless a write still failed transiently: rows
    Weaviate refused for good are in the failure report and do not hold it
    back (they would stall it for ever).
    """
    syncer = ObjectSyncer(ctx, e)
    run = EntityRun(syncer.report, cursors=dict(previous))
    overlap = timedelta(seconds=ctx.settings.overlap_seconds)
    table = reading.table_for(e)
    syncer.collection_was_empty = _first_sync(ctx, e.collection, mode)  # no stored hash to read
    cursors = {k: Cursor.from_json(previous.get(k)) for k in shards}
    whole = {} if mode == SWEEP else {k: s for k, s in shards.items() if mode == FULL or cursors[k] is None}
    # When the delete log was read (none: no log), once for the step, before anything is read.
    log_read_at = delete_log.mark(ctx.db) if mode != SWEEP else None
    if whole:
        # Every shard read whole is one stream of pages (one scan of the table when they are all of
        # them). Marks are read before the scan: later changes stay ahead of them; a full pass needs
        # nothing of the delete log logged before it.
        marks = {k: high_water(ctx.db, table, [s]).log_read(log_read_at) for k, s in whole.items()}
        ranges = None
        if mode == FULL and not syncer.collection_was_empty and covers_all(shards):
            ranges = _ranges_to_read(ctx, e, syncer.report)  # those whose digests differ, if it applies
        if ranges is None:
            syncer.sync_shards(list(whole.values()))
        else:
            syncer.sync_ranges(ranges)
            gone = _orphans_in(ctx, e, ranges)
            _delete(ctx, e, gone, run)
            run.removed += gone
        stalled = [i for i in syncer.report.write.gave_up_keys() if isinstance(i, int)]
        held = shards_holding(whole, stalled)
        run.cursors.update({k: m.to_json() for k, m in marks.items() if k not in held})
    # The shards followed from a cursor; their soft deletes are read in one query (one table scan),
    # before their changed rows: the deleted cursors move with this read alone (_incremental_shard).
    followed = {
        k: (s, cursor)
        for k, s in shards.items()
        if mode != SWEEP and k not in whole and (cursor := cursors[k]) is not None
    }
    soft_deleted = soft_deleted_since(ctx.db, e, followed, overlap)
    for key, (shard, cursor) in followed.items():
        gave_up_before = syncer.report.write.gave_up
        new = _incremental_shard(ctx, syncer, run, shard, cursor, soft_deleted[key], overlap, log_read_at)
        if syncer.report.write.gave_up == gave_up_before:
            run.cursors[key] = new.to_json()
    # Rows removed outright leave no trace to follow: compare counts, sweep when they differ.
    live = reading.count_live(ctx.db, e)
    objects = weaviate_client.count_objects(ctx.client, ctx.collection(e.collection))
    if objects != live and run.unmatched:  # an object the id filter missed may be left over
        _delete_unmatched(ctx, e, run)
        objects = weaviate_client.count_objects(ctx.client, ctx.collection(e.collection))
    if needs_sweep(
        mode,
        covers_all(shards),
        syncer.report.write.failed,
        objects,
        live,
    ):
        # Incremental: a few rows removed are found by ranges, not by walking every object (unless
        # they are everywhere: then the ranges give up and the sweep walks).
        orphans = _orphans_by_ranges(ctx, e, list(shards.values())) if mode == INCREMENTAL else None
        if orphans is not None:
            _delete(ctx, e, orphans, run)
            run.removed += orphans
        else:
            sweep = sweep_orphans(ctx.db, ctx.client, e, list(shards.values()), ctx.collection(e.collection))
            run.deleted += sweep.deleted
            run.removed += sweep.ids
            add_sample(run.deleted_sample, sweep.ids)
        run.swept = True
    # Counted again only when the sweep deleted something.
    if run.deleted:
        objects = weaviate_client.count_objects(ctx.client, ctx.collection(e.collection))
    run.object_count = objects
    return run


def _id_range(ctx: SyncContext, e: EntityType) -> tuple[int, int] | None:
    """``[low, high)`` covering every id on either side."""
    return digests.covering_span(
        reading.id_bounds(ctx.db, e),
        weaviate_client.source_id_bounds(ctx.client, ctx.collection(e.collection)),
    )


def _ranges_to_read(
    ctx: SyncContext, e: EntityType, report: ObjectSyncReport, rows: bool = True
) -> list[tuple[int, int]] | None:
    """The id ranges of ``e`` whose digests differ between the database and Weaviate (``digests.py``):
    the rows' and the references', or (without ``rows``: the edges step) the references' alone;
    None when the check does not apply or the differences are everywhere (then everything is read).
    Notes in ``report`` how many live rows matched and how many ranges are to be read."""
    if not digests.applies(ctx.db, ctx.settings, ctx.force):
        return None
    fingerprint = digests.fingerprint(e, ctx.settings)
    found = digest_ranges.object_ranges(
        ctx.db, ctx.client, e, ctx.collection(e.collection), fingerprint, WALK_SHARE, rows=rows
    )
    if found is None:
        return None
    ranges, matched = found
    report.rows_matched_by_digest += matched
    report.digest_ranges_read += len(ranges)
    return ranges


def _passage_ranges_to_read(
    ctx: SyncContext, syncer: PassageSyncer, e: EntityType
) -> list[tuple[int, int]] | None:
    """The ranges of parent ids of ``e`` whose first passages' digests differ from their rows';
    None when the check does not apply or the differences are everywhere."""
    if not digests.applies(ctx.db, ctx.settings, ctx.force):
        return None
    fingerprint = digests.passage_fingerprint(e, ctx.settings, syncer.parent_target(e))
    passages = ctx.collection(PASSAGE_COLLECTION)
    found = digest_ranges.mark_ranges(ctx.db, ctx.client, e, passages, fingerprint, WALK_SHARE)
    if found is None:
        return None
    ranges, matched = found
    syncer.report.parents_matched_by_digest += matched
    syncer.report.digest_ranges_read += len(ranges)
    return ranges


def _orphans_in(ctx: SyncContext, e: EntityType, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """Ids in ``ranges`` of objects whose row is gone or soft-deleted (stored ids read first: a row
    inserted meanwhile is live, not an orphan)."""
    return [
        i
        for low, high in ranges
        for a in range(low, high, digests.BUCKET)
        for i in _orphans_between(ctx, e, a, min(a + digests.BUCKET, high))
    ]


def _orphans_between(ctx: SyncContext, e: EntityType, low: int, high: int) -> list[int]:
    """Ids in ``[low, high)`` of objects whose row is gone or soft-deleted (at most ``ID_CHUNK`` ids)."""
    stored = weaviate_client.objects_between(ctx.client, ctx.collection(e.collection), low, high)
    return sorted(set(stored) - reading.live_ids_between(ctx.db, e, low, high)) if stored else []


def _orphans_by_ranges(ctx: SyncContext, e: EntityType, shards: list[reading.Shard]) -> list[int] | None:
    """Ids (in ``shards``) of objects whose row is gone or soft-deleted, by bisecting id ranges on counts;
    None when they are in so many ranges that walking every id is cheaper."""
    span = _id_range(ctx, e)
    if span is None:
        return []

    found = bisect_mismatches(
        *span,
        database=lambda a, b: reading.count_live_between(ctx.db, e, a, b),
        weaviate=lambda a, b: weaviate_client.count_between(ctx.client, ctx.collection(e.collection), a, b),
        leaf=lambda a, b: _orphans_between(ctx, e, a, b),
        max_leaf_share=WALK_SHARE,
    )
    return None if found is None else [i for i in found if reading.in_shards(i, shards)]


def run_entity_ids(
    ctx: SyncContext, e: EntityType, shards: Shards, ids: Sequence[int], previous: Mapping[str, CursorJson]
) -> EntityRun:
    """Sync exactly the rows ``ids`` of ``e`` (those in ``shards``), now: the old queue's row task.

    Live rows are written (unchanged ones skipped by hash); the objects of ids
    whose row is soft-deleted or gone are deleted. No cursor moves (the
    previous ones are recorded again) and no sweep runs: the next incremental
    run reads what it would have read.
    """
    chosen = sorted({i for i in ids if reading.in_shards(i, list(shards.values()))})
    syncer = ObjectSyncer(ctx, e)
    run = EntityRun(syncer.report, rows_changed=len(chosen), cursors=dict(previous))
    syncer.sync_ids(chosen)
    live = reading.live_ids_among(ctx.db, e, chosen)
    gone = [i for i in chosen if i not in live]
    _delete(ctx, e, gone, run)
    _delete_unmatched(ctx, e, run)
    run.removed += gone
    run.object_count = weaviate_client.count_objects(ctx.client, ctx.collection(e.collection))
    return run


def shards_holding(shards: Shards, row_ids: Iterable[int]) -> set[str]:
    """Keys of the shards that hold one of ``row_ids``: rows whose writes still failed transiently
    when the retries ran out, so those shards' cursors stay where they were."""
    ids = list(row_ids)
    return {key for key, shard in shards.items() if any(shard.contains(i) for i in ids)}


def covers_all(shards: Shards) -> bool:
    """Whether ``shards`` are every shard of the table."""
    return reading.covers_every_id(list(shards.values()))


def needs_sweep(mode: str, all_shards: bool, failed: int, objects: int, live_rows: int) -> bool:
    """Whether the orphan sweep (a walk over every object id) must run after a step.

    A sweep run always sweeps. After a full pass over every shard that failed
    nowhere, every live row has its object, so the objects outnumber the live
    rows exactly by the orphans: equal counts mean there are none. An
    incremental run sweeps when the counts differ (rows removed outright).
    """
    if mode == SWEEP:
        return True
    if mode == FULL and (not all_shards or failed):
        return True
    return objects != live_rows


def _incremental_shard(
    ctx: SyncContext,
    syncer: ObjectSyncer,
    run: EntityRun,
    shard: reading.Shard,
    cursor: Cursor,
    gone: list[tuple[int, Any]],
    overlap: timedelta,
    log_read_at: datetime | None,
) -> Cursor:
    """Write the shard's rows changed since ``cursor`` and delete its soft-deleted ones (``gone``:
    ``(id, deleted_at)`` since the cursor), and those the delete log names (when it is installed:
    ``log_read_at``, read before it).

    Returns the new cursor.
    """
    e, new = syncer.entity, cursor
    for page in iter_changed_pages(ctx.db, e, [shard], cursor, overlap, ctx.settings.batch_size):
        run.rows_changed += len(page)
        syncer.write_rows([r for r in page if r[e.soft_delete_column] is None])
        _delete(ctx, e, [r["id"] for r in page if r[e.soft_delete_column] is not None], run)
        for r in page:  # not past ``gone``'s deletes: one made after that read waits for the next run
            new = new.advanced(r["updated_at"], r["id"], None)
    run.rows_changed += len(gone)
    _delete(ctx, e, [i for i, _ in gone], run)
    for row_id, deleted_at in gone:
        new = new.advanced(None, row_id, deleted_at)
    # Rows removed outright, when the delete log is installed: their objects go (the edges step reads
    # the log too, for the sources that pointed at them). An id logged but live again stays.
    if log_read_at is None:
        return new
    removed = _logged_removals(ctx, e, shard, cursor, overlap)
    run.rows_changed += len(removed)
    deleted_before = run.deleted
    _delete(ctx, e, removed, run)  # ids read again inside the overlap window are gone already
    run.logged_removals += run.deleted - deleted_before
    return new.log_read(log_read_at)


def _logged_removals(
    ctx: SyncContext, e: EntityType, shard: reading.Shard, cursor: Cursor, overlap: timedelta
) -> list[int]:
    """Ids of rows of ``e`` in ``shard`` the delete log names since ``cursor`` (minus the overlap)
    that are not live: a row deleted and inserted anew under the same id stays."""
    logged = [i for i, _ in delete_log.removed_rows(ctx.db, e.table, [shard], cursor.removed_at, overlap)]
    return sorted(set(logged) - reading.live_ids_among(ctx.db, e, logged)) if logged else []


def _delete(ctx: SyncContext, e: EntityType, ids: list[int], run: EntityRun) -> None:
    if ids:
        add_sample(run.deleted_sample, ids)
        uuids = [object_uuid(e.collection, i) for i in ids]
        stored_in = ctx.collection(e.collection)
        run.deleted += weaviate_client.delete_uuids(ctx.client, stored_in, uuids, run.unmatched)


def _delete_unmatched(ctx: SyncContext, e: EntityType, run: EntityRun) -> None:
    """Delete by uuid, one by one, the objects the id filter did not find (gone already, or stored
    with their index entries lost)."""
    if run.unmatched:
        run.deleted += weaviate_client.delete_by_uuid(
            ctx.client, ctx.collection(e.collection), sorted(set(run.unmatched))
        )
        run.unmatched.clear()


# --- the edges step ------------------------------------------------------------------------


@dataclass
class EdgesRun:
    reports: list[ObjectSyncReport]
    edges_changed: int = 0
    changed_edge_ids: list[int] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    cursors: dict[str, CursorJson] = field(default_factory=dict)
    removed_targets: int = 0  # target rows removed outright that the entity steps named
    sources_of_removed: int = 0  # sources (per target) found pointing at them, rewritten
    log_pruned: int = 0  # entries of the delete log a full run pruned
    written_whole: list[str] = field(default_factory=list)  # source types whose digests were not compared


def _target_high_water(ctx: SyncContext, log_read_at: datetime | None) -> dict[str, Any]:
    """Newest change of each target table (all shards): the same for every edges shard."""
    return {
        t.table: high_water(ctx.db, reading.table_for(t), []).log_read(log_read_at).to_json()
        for t in edge_targets()
    }


def run_edges(
    ctx: SyncContext,
    shards: Shards,
    mode: str,
    previous: Mapping[str, CursorJson],
    removed: Mapping[str, Sequence[int]] | None = None,
    written_whole: Collection[str] = (),
) -> EdgesRun:
    """Full: rewrite every source object whose reference lists changed. Incremental: only the
    sources of changed edges, of changed target rows and of the target rows ``removed`` outright
    (``{collection: ids}``, as the entity steps found them), then a count check per source type
    that searches for references lost another way (edges removed outright).

    ``written_whole``: source types whose entity step ran in this same run over every shard, in full
    mode, and deferred no reference and failed no object. Their objects already carry exactly the
    references the database has (each range either matched its digests, references included, or
    was written with every reference, its targets all present), so a full run does not compare
    their reference digests again."""
    removed = {c: sorted(set(ids)) for c, ids in (removed or {}).items() if ids}
    if mode != FULL:  # the sources of changes: their targets are written without a lookup each
        ctx = replace(ctx, trusted=frozenset(t.collection for t in edge_targets()))
    syncers = {e.collection: ObjectSyncer(ctx, e) for e in edge_sources()}
    run = EdgesRun([s.report for s in syncers.values()], cursors=dict(previous))
    overlap = timedelta(seconds=ctx.settings.overlap_seconds)

    def gave_up() -> int:
        return sum(s.report.write.gave_up for s in syncers.values())

    # The delete log, when installed: read once for the run; its count check is needed only when
    # a cursor had not read the log yet, or so long ago that entries it had not read were pruned.
    log_read_at = delete_log.mark(ctx.db)
    log_covers = log_read_at is not None
    keep = timedelta(days=ctx.settings.delete_log_days)
    target_marks: dict[str, Any] | None = None
    # Target tables are read whole, whatever the shard: each distinct cursor is read once per run.
    changed_targets: dict[tuple[str, str], tuple[list[tuple[int, Any, Any]], dict[str, set[int]]]] = {}
    # Incremental: the sources every shard touched, written once per type after the loop (one
    # sync_ids per type, not one per shard and type); the shards' new marks wait for those writes.
    touched_all: dict[str, set[int]] = {}
    sources_of_removed: dict[str, dict[str, set[int]]] = {}  # target collection -> sources, every shard
    pending: dict[str, CursorJson] = {}
    followed = [k for k in shards if previous.get(k)]
    edge_cursors = {k: Cursor.from_json((previous[k] or {}).get("edges")) or Cursor() for k in followed}
    edges_by_shard: dict[str, list[Any]] = {}  # incremental: every shard's changed edges, one scan
    if mode != FULL:
        edges_by_shard = changed_edges(ctx.db, {k: (shards[k], c) for k, c in edge_cursors.items()}, overlap)
    for key, shard in shards.items():
        before = gave_up()
        cursors = previous.get(key)
        if mode == FULL or not cursors:
            log_covers = False  # nothing was read from the log for this shard
            target_marks = target_marks or _target_high_water(ctx, log_read_at)
            edges = reading.edges_table()
            edge_mark = high_water(ctx.db, edges, [shard], id_column="source_id").log_read(log_read_at)
            marks = {"edges": edge_mark.to_json(), **target_marks}
            if ctx.force or not covers_all(shards):
                for s in syncers.values():
                    s.sync_shards([shard])
            if gave_up() == before:
                run.cursors[key] = marks
            continue
        marks = dict(cursors)
        edge_cursor = edge_cursors[key]
        rows = edges_by_shard[key]
        # Edges removed outright, when the delete log is installed: their sources lost a reference.
        logged = []
        if log_read_at is not None:
            logged = delete_log.removed_edges(ctx.db, [shard], edge_cursor.removed_at, overlap)
            log_covers &= _log_covers(ctx, EDGES_TABLE, edge_cursor, log_read_at, keep, overlap)
        run.edges_changed += len(rows) + len(logged)
        run.changed_edge_ids.extend(r["id"] for r in rows)
        seen = [(r["id"], r["source_table"], r["source_id"], r["relation"]) for r in rows]
        seen += [(g["id"], g["source_table"], g["source_id"], g["relation"]) for g in logged]
        touched = edge_rules.touched_sources(seen, [shard])
        for r in rows:
            edge_cursor = edge_cursor.advanced(r["updated_at"], r["id"], r["deleted_at"])
        edge_cursor = edge_cursor.log_read(log_read_at)
        marks["edges"] = edge_cursor.to_json()
        for t in edge_targets():
            c = Cursor.from_json(cursors.get(t.table)) or Cursor()
            memo_key = (t.table, repr(c))
            if memo_key not in changed_targets:
                changed = changed_target_ids(ctx.db, t, c, overlap)
                pointed_at = [i for i, _, _ in changed]
                if log_read_at is not None:  # and targets removed outright that the delete log names
                    pointed_at += [
                        i for i, _ in delete_log.removed_rows(ctx.db, t.table, [], c.removed_at, overlap)
                    ]
                    log_covers &= _log_covers(ctx, t.table, c, log_read_at, keep, overlap)
                # Their sources in every shard, read once; each shard takes its own below.
                every_shard = sources_pointing_at(ctx.db, t, pointed_at, list(shards.values()))
                changed_targets[memo_key] = (changed, every_shard)
            changed, every_shard = changed_targets[memo_key]
            for collection, ids in every_shard.items():
                touched.setdefault(collection, set()).update(i for i in ids if shard.contains(i))
            for row_id, updated_at, deleted_at in changed:
                c = c.advanced(updated_at, row_id, deleted_at)
            marks[t.table] = c.log_read(log_read_at).to_json()
            # Rows removed outright leave their edges behind (no foreign key on a generic table): the
            # sources those edges name still carry a reference to the removed object.
            if t.collection not in sources_of_removed:  # the same ids for every shard: read once
                gone = removed.get(t.collection, [])
                sources_of_removed[t.collection] = sources_pointing_at(ctx.db, t, gone, list(shards.values()))
            for collection, ids in sources_of_removed[t.collection].items():
                mine = {i for i in ids if shard.contains(i)}
                touched.setdefault(collection, set()).update(mine)
                run.sources_of_removed += len(mine)
        for collection, ids in touched.items():
            touched_all.setdefault(collection, set()).update(ids)
        pending[key] = marks
    if pending:
        run.removed_targets = sum(len(ids) for ids in removed.values())
    before = gave_up()
    for collection, ids in sorted(touched_all.items()):
        syncers[collection].sync_ids(sorted(ids))
    # Then what no cursor shows (deferred references, targets or edges removed outright): found on the
    # state just written, so only the few sources still off are read.
    if log_covers and pending:
        run.reconciled.append("skipped: the delete log covers this run")
    elif not (mode == FULL and (ctx.force or not covers_all(shards))):
        for s in syncers.values():  # the targets known to exist, before the walks' own memory
            s.forget_targets()
        full = mode == FULL
        for collection, s in syncers.items():
            if full and collection in written_whole:
                run.written_whole.append(collection)
                continue
            ranges = _ranges_to_read(ctx, entity(collection), s.report, rows=False) if full else None
            if ranges is not None:  # by digests: references deferred or gone leave a range's sum off
                written = s.report.write.written
                s.sync_ranges(ranges)
                if s.report.write.written > written:
                    run.reconciled.append(f"{collection} ({s.report.write.written - written})")
                continue
            wrong = _sources_with_wrong_references(ctx, collection, list(shards.values()), walk=full)
            if wrong:
                s.sync_ids(wrong)
                run.reconciled.append(f"{collection} ({len(wrong)})")
    if gave_up() == before:
        run.cursors.update(pending)
    if mode == FULL and covers_all(shards):  # a full run needs no log: old entries can go
        run.log_pruned = delete_log.prune(ctx.db, keep)
    return run


def _log_covers(
    ctx: SyncContext, table: str, cursor: Cursor, now: datetime, keep: timedelta, overlap: timedelta
) -> bool:
    """Whether the delete log names every row of ``table`` removed since ``cursor`` read it: it was
    read recently enough (``delete_log.covers``) and the table was not truncated since."""
    return delete_log.covers(cursor.removed_at, now, keep) and not delete_log.truncated(
        ctx.db, table, cursor.removed_at, overlap
    )


def _sources_with_wrong_references(
    ctx: SyncContext, collection: str, shards: list[reading.Shard], walk: bool = False
) -> list[int]:
    """Sources in ``shards`` whose object carries another number of references than the database says.

    The entity steps write every object whole, with its references to targets
    that exist, targets first. What they cannot see: references deferred
    because the target was not written yet (a self-reference, a failed
    target), and references left on objects by targets or edges removed
    outright, which no cursor shows. Both change a source's count. One
    aggregate on each side tells whether anything is off; then ranges of ids
    whose sums differ are halved until the counts can be compared source by
    source (``reconcile.py``), and only the sources that differ are rewritten.

    With ``walk`` (full runs) every object's count is read instead, by one cursor
    walk (9 s for 300,000 objects), and compared with the database's source by source;
    so does an incremental run whose differences turn out to be everywhere
    (``reconcile.WALK_SHARE``).
    """
    found = None if walk else _wrong_references_by_ranges(ctx, collection)
    if found is None:  # every object's count, from a cursor walk: no aggregate or filter is trusted
        expected = reference_count_table(ctx.db, collection)
        found = weaviate_client.other_reference_counts(ctx.client, ctx.collection(collection), expected)
    return sorted(i for i in found if reading.in_shards(i, shards))


def _wrong_references_by_ranges(ctx: SyncContext, collection: str) -> list[int] | None:
    """Sources whose reference count differs, by bisecting id ranges on sums of counts; None when
    they are in so many ranges that walking every object is cheaper (the twin of _orphans_by_ranges)."""
    stored_in = ctx.collection(collection)
    span = _id_range(ctx, entity(collection))
    if span is None:
        return []

    def leaf(low: int, high: int) -> list[int]:
        expected = valid_reference_counts(ctx.db, collection, low, high)
        stored = weaviate_client.objects_between(ctx.client, stored_in, low, high)
        return [sid for sid, n in stored.items() if expected.get(sid, 0) != n]

    return bisect_mismatches(
        *span,
        database=lambda a, b: valid_reference_count(ctx.db, collection, a, b),
        weaviate=lambda a, b: weaviate_client.reference_sum_between(ctx.client, stored_in, a, b),
        leaf=leaf,
        max_leaf_share=WALK_SHARE,
    )


def edges_step(
    ctx: SyncContext,
    shards: Shards,
    mode: str,
    previous: Mapping[str, CursorJson],
    removed: Mapping[str, Sequence[int]] | None = None,
    written_whole: Collection[str] = (),
) -> tuple[list[ObjectSyncReport], dict[str, Any]]:
    """The edges step over every edge: its reports and metadata.

    An incremental run explains the edges it saw change.
    """
    run = run_edges(ctx, shards, mode, previous, removed, written_whole)
    classification = edge_rules.classify_edges(
        ctx.db, list(shards.values()), None if mode == FULL else run.changed_edge_ids
    )
    return run.reports, {
        **classification.as_metadata(),
        "window": "all edges",
        "mode": mode,
        "edges_changed": run.edges_changed,
        # target rows removed outright (named by the entity steps), and the sources rewritten for them
        "removed_targets": run.removed_targets,
        "sources_of_removed_targets": run.sources_of_removed,
        # the source types whose reference counts were off, with how many sources were rewritten
        "reconciled_by_count_check": ", ".join(run.reconciled) or "none",
        # full runs: source types written whole earlier in this run, their digests not compared again
        "sources_written_whole": ", ".join(run.written_whole) or "none",
        "delete_log": delete_log.status(ctx.db),
        "delete_log_pruned": run.log_pruned,
        "cursor_before": dict(previous),
        "cursor_after": run.cursors,
    }


def edge_window_step(
    ctx: SyncContext, shards: Shards, window: edge_rules.EdgeWindow, previous: Mapping[str, CursorJson]
) -> tuple[list[ObjectSyncReport], dict[str, Any]]:
    """The old ``EnqueueEdgeSync(batch_size, offset)``: rewrite the sources of one window of edge rows.

    A window moves no cursor: the previous cursors are recorded unchanged.
    """
    rows = edge_rules.window_edges(ctx.db, window)
    classification = edge_rules.classify_edges(ctx.db, list(shards.values()), [r[0] for r in rows])
    touched = edge_rules.touched_sources(rows, list(shards.values()))
    reports = [ObjectSyncer(ctx, entity(c)).sync_ids(sorted(ids)) for c, ids in sorted(touched.items())]
    return reports, {
        **classification.as_metadata(),
        "window": f"offset {window.offset}, batch_size {window.batch_size}",
        "window_edge_rows": len(rows),
        "cursor_after": dict(previous),
    }


# --- the passages step -------------------------------------------------------------------


def run_passages(
    ctx: SyncContext, shards: Shards, mode: str, previous: Mapping[str, CursorJson]
) -> tuple[PassageReport, dict[str, CursorJson]]:
    """Passages of every parent type's long texts over ``shards``: full, incremental or sweep.

    Cursors are per shard and per parent table (``{shard: {table: cursor}}``). The shards a
    parent table is read whole in (full mode, or no cursor yet) are one stream of pages; writes
    stay in flight while the next page is prepared. A shard's cursors move unless one of its
    parents' writes gave up. Sweep runs end with a sweep of passages whose parent is gone; full
    and incremental runs sweep only when the parents holding a first passage and the live
    parents with text differ in number (full runs also after any failure, or over some shards).
    """
    syncer = PassageSyncer(ctx)
    overlap = timedelta(seconds=ctx.settings.overlap_seconds)
    log_read_at = delete_log.mark(ctx.db) if mode != SWEEP else None
    marks: dict[str, dict[str, Any]] = {k: dict(previous.get(k) or {}) for k in shards}
    syncer.collection_was_empty = _first_sync(ctx, PASSAGE_COLLECTION, mode)  # nothing stored to compare
    try:
        for e in passage_parents() if mode != SWEEP else ():
            table = reading.table_for(e)
            old = {k: Cursor.from_json(marks[k].get(e.table)) for k in shards}
            whole = [k for k in shards if mode == FULL or old[k] is None]
            for k in whole:  # read before the scan: later changes stay ahead of it
                marks[k][e.table] = high_water(ctx.db, table, [shards[k]]).log_read(log_read_at).to_json()
            ranges = None  # a full run over every shard reads only the ranges whose digests differ
            if mode == FULL and covers_all(shards) and not syncer.collection_was_empty:
                ranges = _passage_ranges_to_read(ctx, syncer, e)
            pages = reading.iter_live_pages(
                ctx.db, e, [shards[k] for k in whole], ctx.settings.batch_size, ranges
            )
            for page in pages if whole else ():
                syncer.sync_rows(e, page)
            followed = {
                k: (s, since) for k, s in shards.items() if k not in whole and (since := old[k]) is not None
            }
            soft_deleted = soft_deleted_since(ctx.db, e, followed, overlap)
            for key, (shard, cursor) in followed.items():
                changed = _changed_passages(
                    ctx, syncer, e, shard, cursor, soft_deleted[key], overlap, log_read_at
                )
                marks[key][e.table] = changed.to_json()
        syncer.flush()
    finally:
        syncer.close()
    held = shards_holding(shards, (passage_parent_id(str(k)) for k in syncer.report.write.gave_up_keys()))
    cursors: dict[str, CursorJson] = dict(previous)
    if mode != SWEEP:
        cursors.update({k: m for k, m in marks.items() if k not in held})
    clean = syncer.report.write.failed == 0 and covers_all(shards)
    for e in passage_parents():
        if mode == SWEEP or (mode == FULL and not clean) or _passage_parents_differ(ctx, e):
            syncer.sweep(e, list(shards.values()))
    return syncer.report, cursors


def _changed_passages(
    ctx: SyncContext,
    syncer: PassageSyncer,
    e: EntityType,
    shard: reading.Shard,
    cursor: Cursor,
    gone: list[tuple[int, Any]],
    overlap: timedelta,
    log_read_at: datetime | None,
) -> Cursor:
    """Passages of the parents of ``shard`` changed since ``cursor``, soft-deleted (``gone``), or
    (when the delete log is installed: ``log_read_at``, read before it) removed outright; the cursor
    they move it to."""
    new = cursor
    for page in iter_changed_pages(ctx.db, e, [shard], cursor, overlap, ctx.settings.batch_size):
        syncer.sync_rows(e, [r for r in page if r[e.soft_delete_column] is None])
        syncer.delete_parents(e, [r["id"] for r in page if r[e.soft_delete_column] is not None])
        for r in page:  # not past ``gone``'s deletes: one made after that read waits for the next run
            new = new.advanced(r["updated_at"], r["id"], None)
    syncer.delete_parents(e, [i for i, _ in gone])
    for row_id, deleted_at in gone:
        new = new.advanced(None, row_id, deleted_at)
    if log_read_at is None:
        return new
    syncer.delete_parents(e, _logged_removals(ctx, e, shard, cursor, overlap))
    return new.log_read(log_read_at)


def _passage_parents_differ(ctx: SyncContext, e: EntityType) -> bool:
    """Whether the parents holding passage 0 and the live rows with text differ in number."""
    with_text = reading.count_live_with_text(ctx.db, e, [spec.property for spec in e.passages])
    passages = ctx.collection(PASSAGE_COLLECTION)
    return weaviate_client.count_first_passages(ctx.client, e.collection, passages) != with_text


def resolve_mode(configured: str | None, tagged: str | None, allowed: tuple[str, ...]) -> str:
    """The step's mode: its run config, else the run's mode tag, else full.

    The edges have no sweep of their own: after a sweep they run in full, to set
    every reference list right. Raises ``ValueError`` for an unknown mode.
    """
    mode = configured or tagged or FULL
    if mode == SWEEP and SWEEP not in allowed:
        mode = FULL
    if mode not in allowed:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(allowed)}")
    return mode
