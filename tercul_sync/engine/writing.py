"""Writing rows to Weaviate as whole objects: the work inside every step.

One path writes objects, whoever asks: the entity steps (a shard at a time),
the edges step (the source objects whose reference lists it sets) and the
incremental passes (the rows that changed). An object is always written
whole, with its properties and its complete reference lists, so a write
replaces and a re-run never duplicates anything, references included.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import weaviate
from sqlalchemy.engine import Engine

from tercul_sync.engine import digests, reading, weaviate_client
from tercul_sync.engine.batching import BatchProcessor, WriteReport
from tercul_sync.engine.embedding import Embedder, EmbedStats, make_embedder
from tercul_sync.engine.objects import HASH_PROPERTY, ObjectWrite, build_object, chunk, row_problem
from tercul_sync.engine.registry import EntityType, object_uuid, relations_from
from tercul_sync.engine.reports import ReasonLog
from tercul_sync.engine.settings import Settings
from tercul_sync.engine.vectors import (
    VECTOR_HASH_PROPERTY,
    decode_hashes,
    parse_vector,
    text_hash,
    values_hash,
    vector_texts,
)

# Sends one batch of objects to a collection; returns {index: message} for the refused ones.
SendObjects = Callable[[weaviate.WeaviateClient, str, list[ObjectWrite]], dict[int, str]]

# A row read by column name: SQLAlchemy's RowMapping (whose keys may also be
# column objects, so it is no Mapping[str, Any]) or a plain dict.
Row: TypeAlias = Mapping[Any, Any]


@dataclass(frozen=True)
class SyncContext:
    """What every write needs: the database, the Weaviate client, the settings, how to send."""

    db: Engine
    client: weaviate.WeaviateClient
    settings: Settings
    force: bool = False  # rewrite objects even when their content hash is unchanged
    send: SendObjects = weaviate_client.send_objects
    embedder: Embedder | None = None  # client mode: one per step (made from the settings when None)
    # Registry name -> the collection to read and write instead of the alias (a rebuild's new versions).
    names: Mapping[str, str] = field(default_factory=dict)
    # Registry name -> a collection whose stored vectors may be reused (a rebuild's old versions).
    reuse_vectors_from: Mapping[str, str] = field(default_factory=dict)
    # Registry names of types every live row of which had an object as this step began (their full
    # step ran earlier in the same run, over every shard, and failed no row): references to them are
    # written without asking Weaviate first whether each target exists (docs/design.md, "Targets
    # written whole earlier in the run are trusted"). Weaviate checks every reference it is sent
    # anyway; a row it refuses for a missing target is prepared again with the check
    # (ObjectSyncer._retry_missing_targets).
    trusted: frozenset[str] = frozenset()

    def collection(self, name: str) -> str:
        """The collection this context reads and writes for registry name ``name``."""
        return self.names.get(name, name)


# Weaviate's refusal of an object whose reference names no object (usecases/objects/validation).
MISSING_TARGET = re.compile(r"'cref' \S+: no object with id \S+ found")

VECTOR_CHECK_SAMPLE = 1_000  # written objects per step whose vectors are read back and checked
PREPARE_THREADS = 2  # pages prepared at once (one computes while another waits on PostgreSQL or Weaviate)


@dataclass
class ObjectSyncReport:
    """What syncing one collection did."""

    collection: str
    rows_read: int = 0
    rows_matched_by_digest: int = 0  # live rows in ranges whose digests matched: not read (digests.py)
    digest_ranges_read: int = 0  # ranges whose digests differed, read whole
    unchanged: int = 0
    references_written: int = 0
    deferred_references: ReasonLog = field(default_factory=ReasonLog)
    write: WriteReport = field(default_factory=WriteReport)
    embeddings: EmbedStats = field(default_factory=EmbedStats)
    embeddings_reused: int = 0
    # (uuid, vector names it must carry) of some written objects, for the vectors_present check
    vector_sample: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    reindexed: int = 0  # objects stored but not found by id, deleted and written again (_make_findable)
    rechecked_rows: int = 0  # rows refused for a missing reference target, prepared again with checks


class ObjectSyncer:
    """Writes rows of one entity type as whole objects through the batch processor."""

    def __init__(self, ctx: SyncContext, e: EntityType) -> None:
        self.ctx, self.entity, self.settings = ctx, e, ctx.settings
        self.engine, self.client = ctx.db, ctx.client
        self.report = ObjectSyncReport(e.collection)
        self._processor: BatchProcessor[ObjectWrite] = BatchProcessor(
            lambda items: ctx.send(ctx.client, ctx.collection(e.collection), items),
            key_of=lambda o: o.row_id,
            retry=ctx.settings.retry,
        )
        self.report.write = self._processor.report
        # Row ids of target objects seen to exist during this step, by target collection (ints, not
        # uuid strings: a third of the memory, and this grows with the catalog).
        self._present: dict[str, set[int]] = {}
        self._mode = ctx.settings.vectorizer if e.vectors else None
        self._embedder = ctx.embedder
        if self._mode == "client" and self._embedder is None:
            self._embedder = make_embedder(ctx.settings)
        if self._embedder is not None:
            self.report.embeddings = self._embedder.stats
        self._rejected: list[tuple[int, str]] = []  # rows refused before writing (bad vectors)
        self._counting = threading.Lock()  # pages are prepared in several threads; the report is shared
        self._columns_checked = False  # column mode: the vector columns were found in the table
        # Set when the collection held no object as the step began (a first sync): nothing stored to compare.
        self.collection_was_empty = False
        self._fingerprint = digests.fingerprint(e, ctx.settings)
        self._has_relations = bool(relations_from(e.collection))
        # A type's references to itself are always checked: its targets are being written now.
        self._trusted = ctx.trusted - {e.collection}
        self._retried_missing = False

    def forget_targets(self) -> None:
        """Drop the targets seen to exist (they are looked up again when needed): frees memory that
        grows with the catalog."""
        self._present.clear()

    def sync_shards(self, shards: Sequence[reading.Shard]) -> ObjectSyncReport:
        """Write the live rows of ``shards``: one stream of pages through one pipeline, so the
        pipeline does not drain between shards."""
        self._pipeline(reading.iter_live_pages(self.engine, self.entity, shards, self.settings.batch_size))
        return self.report

    def sync_ranges(self, ranges: Sequence[tuple[int, int]]) -> ObjectSyncReport:
        """Write the live rows whose ids are in ``ranges`` (``[low, high)``, in order), every shard."""
        self._pipeline(
            reading.iter_live_pages(
                self.engine, self.entity, [reading.Shard(0, 1)], self.settings.batch_size, ranges
            )
        )
        return self.report

    def sync_ids(self, ids: Sequence[int]) -> ObjectSyncReport:
        """Write the live rows among ``ids`` (rows that are not live are left alone)."""
        ordered, size = sorted(set(ids)), self.settings.batch_size
        self._pipeline(
            reading.fetch_live_rows(self.engine, self.entity, ordered[i : i + size])
            for i in range(0, len(ordered), size)
        )
        return self.report

    def write_rows(self, rows: Sequence[Row]) -> None:
        self._write(self._prepare(rows))

    def _pipeline(self, pages: Iterable[Sequence[Row]]) -> None:
        """Prepare the next pages (SQL reads, references, stored hashes, content hashes) while earlier
        ones are being written; return once every page is written.

        Two pools of threads. ``PREPARE_THREADS`` prepare pages ahead (one when the step embeds: the
        model already uses every core): a re-run, which writes nothing, is bound by preparing, and
        one page's Python work overlaps another's waits on PostgreSQL and Weaviate. Up to
        ``batches_in_flight`` pages are written at once: Weaviate works on one batch with about one
        core. Pages may land out of order (nothing depends on it: a reference is written only to a
        target that already existed, and cursors move after the whole shard). Memory stays bounded:
        at most ``PREPARE_THREADS + batches_in_flight + 2`` pages are held.
        """
        workers = 1 if self._mode == "client" else PREPARE_THREADS
        in_flight = self.settings.batches_in_flight
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tercul-prepare") as preparing,
            ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="tercul-write") as writing,
        ):
            prepared: deque[Future[list[ObjectWrite]]] = deque()
            written: deque[Future[None]] = deque()

            def write_oldest() -> None:
                written.append(writing.submit(self._write, prepared.popleft().result()))
                while len(written) > in_flight:
                    written.popleft().result()  # raises what the write raised (a refusal stops the step)

            for page in pages:
                prepared.append(preparing.submit(self._prepare, page))
                if len(prepared) > workers:
                    write_oldest()
            while prepared:
                write_oldest()
            while written:
                written.popleft().result()
        self._retry_missing_targets()

    def _retry_missing_targets(self) -> None:
        """Prepare and write again, once, the rows Weaviate refused because a reference's target
        does not exist: a trusted target made or restored after its own step read, or a checked one
        deleted since the check. Their targets are checked this time (from then on, for the whole
        step), so a missing one is deferred like any other and the row lands without it."""
        if self._retried_missing:
            return
        taken = self._processor.withdraw(lambda f: MISSING_TARGET.search(f.message) is not None)
        if not taken:
            return
        self._retried_missing = True
        self._trusted = frozenset()
        self.forget_targets()  # the trusted ones were never checked
        with self._counting:
            self.report.rechecked_rows += len(taken)
            self.report.rows_read -= len(taken)  # read again below
        self.sync_ids([f.key for f in taken if isinstance(f.key, int)])

    def _prepare(self, rows: Sequence[Row]) -> list[ObjectWrite]:
        """The objects of ``rows`` that need writing: references resolved, unchanged ones dropped,
        vectors attached (reused when their text is unchanged, else embedded)."""
        if not rows:
            return []
        # Rows Weaviate cannot hold as they are (objects.row_problem) are reported, not sent.
        problems = {r["id"]: p for r in rows if (p := row_problem(self.entity, r))}
        self._reject((i, f"{self.entity.collection} row {i}: {p}") for i, p in problems.items())
        with self._counting:
            self.report.rows_read += len(rows)
        rows = [r for r in rows if r["id"] not in problems]
        references, reference_digests = self._references([r["id"] for r in rows])
        inputs = self._vector_inputs(rows)
        objects = [
            build_object(
                self.entity,
                row,
                references.get(row["id"], {}),
                self._hashes(inputs.get(row["id"])),
                *self._digests(row, reference_digests.get(row["id"], [])),
            )
            for row in rows
            if self._mode not in ("client", "column") or row["id"] in inputs
        ]
        existing: set[str] | None = None
        fresh = objects
        if self.collection_was_empty:
            existing = set()
        elif not self.ctx.force:
            stored = weaviate_client.stored_hashes(
                self.client, self.ctx.collection(self.entity.collection), [o.uuid for o in objects]
            )
            existing = set(stored)
            fresh = [
                replace(o, not_found_before=o.uuid not in existing)
                for o in objects
                if stored.get(o.uuid, "") != o.properties[HASH_PROPERTY]
            ]
            with self._counting:
                self.report.unchanged += len(objects) - len(fresh)
        if self._mode == "client":
            self._embed(fresh, inputs, existing)
        elif self._mode == "column":
            for o in fresh:
                o.vectors.update(inputs[o.row_id])
        return fresh

    def _vector_inputs(self, rows: Sequence[Row]) -> dict[int, dict[str, Any]]:
        """Client mode: each row's vector texts. Column mode: each row's vectors, bad ones rejected."""
        if self._mode == "client":
            return {r["id"]: vector_texts(self.entity, r, self.settings.embed_max_chars) for r in rows}
        if self._mode != "column":
            return {}
        names = [v.name for v in self.entity.vectors]
        if not self._columns_checked:  # once per step, before the first page
            reading.require_columns(self.engine, self.entity, self._columns(names))
            self._columns_checked = True
        raw = reading.fetch_vector_columns(
            self.engine, self.entity, [r["id"] for r in rows], self._columns(names)
        )
        out: dict[int, dict[str, Any]] = {}
        for row_id in (r["id"] for r in rows):
            try:
                out[row_id] = {
                    n: parse_vector(
                        raw.get(row_id, {}).get(self._columns([n])[0]), self.settings.vector_dimensions
                    )
                    for n in names
                }
            except ValueError as exc:
                self._reject([(row_id, f"{self.entity.collection} row {row_id}: {exc}")])
        return out

    def _reject(self, rows: Iterable[tuple[int, str]]) -> None:
        """Rows refused while preparing (id, why): reported with the next write."""
        with self._counting:
            self._rejected.extend(rows)

    def _columns(self, names: list[str]) -> list[str]:
        return [self.settings.vector_column.format(vector=n) for n in names]

    def _digests(self, row: Row, reference_digests: list[int]) -> tuple[int | None, int | None]:
        """The object's range digests (``digests.py``), when the read gave its row's part: the row's,
        and its references' (for a type that has relations)."""
        digest = digests.stored_digest(row, self._fingerprint)
        if digest is None:
            return None, None
        return digest, digests.references_digest(reference_digests) if self._has_relations else None

    def _hashes(self, inputs: dict[str, Any] | None) -> dict[str, str] | None:
        if self._mode == "client" and self._embedder is not None:
            return {name: text_hash(self._embedder.model_id, text) for name, text in (inputs or {}).items()}
        if self._mode == "column":
            return {name: values_hash(vector) for name, vector in (inputs or {}).items()}
        return None

    def _embed(
        self, objects: list[ObjectWrite], texts: dict[int, dict[str, str]], existing: set[str] | None
    ) -> None:
        """Attach each object's vectors: the stored one when its text hash is unchanged,
        else a new embedding."""
        assert self._embedder is not None
        names = [v.name for v in self.entity.vectors]
        source = self.ctx.reuse_vectors_from.get(self.entity.collection)
        if source is None:
            source = self.ctx.collection(self.entity.collection)
            known = [o.uuid for o in objects if existing is None or o.uuid in existing]
        else:  # a rebuild: the old version holds the vectors, whatever the new one holds
            known = [o.uuid for o in objects]
        stored = weaviate_client.stored_vectors(self.client, source, known, names) if known else {}
        todo: list[tuple[ObjectWrite, str, str]] = []
        for o in objects:
            hashes = decode_hashes(o.properties.get(VECTOR_HASH_PROPERTY))
            old_hashes_raw, old_vectors = stored.get(o.uuid, (None, {}))
            old_hashes = decode_hashes(old_hashes_raw)
            for name, text in texts.get(o.row_id, {}).items():
                if old_hashes.get(name) == hashes.get(name) and name in old_vectors:
                    o.vectors[name] = old_vectors[name]
                    with self._counting:
                        self.report.embeddings_reused += 1
                else:
                    todo.append((o, name, text))
        if todo:
            for (o, name, _), vector in zip(
                todo, self._embedder.embed_passages([t for _, _, t in todo]), strict=True
            ):
                o.vectors[name] = vector

    def _write(self, objects: list[ObjectWrite]) -> None:
        """Write ``objects`` in batches (and report the rows refused while preparing); thread-safe."""
        with self._counting:
            rejected, self._rejected = self._rejected, []
        for row_id, message in rejected:
            self._processor.reject(row_id, message)
        for batch in chunk(
            objects, self.settings.batch_size, self.settings.max_batch_bytes, lambda o: o.size
        ):
            retried_before = self.report.write.retried_batches
            landed = self._processor.write_batch(batch)
            # A batch that needed a retry may have met a crash: all of it is checked (with batches in
            # flight another's retry may count here too, which costs one query and no harm).
            if self.report.write.retried_batches != retried_before:
                self._make_findable(landed)
            elif any(o.not_found_before for o in landed):
                self._make_findable([o for o in landed if o.not_found_before])
            with self._counting:
                self.report.references_written += sum(len(v) for o in landed for v in o.references.values())
                if self._mode in ("client", "column", "weaviate"):
                    room = VECTOR_CHECK_SAMPLE - len(self.report.vector_sample)
                    self.report.vector_sample.extend(
                        (o.uuid, self._expected_vectors(o)) for o in landed[: max(room, 0)]
                    )

    def _make_findable(self, objects: list[ObjectWrite]) -> None:
        """Check that objects the stored-hash read did not find (or that a retried batch wrote) are
        found by id now they are written; delete and write again those that are not.

        A Weaviate killed mid-write can come back with an object in its object store whose index
        entries were lost (weaviate/weaviate#4262: each bucket recovers its own write-ahead log). No
        query by id or property finds it, so its hash read says "absent"; and writing it again does
        not mend it, since Weaviate re-indexes only the properties that changed. Deleting it by
        uuid (which reads the object store) and writing it again does. Costs one id query per batch
        of such writes: none on an unchanged re-run, and on a first sync (an empty collection) only
        for the batches that needed a retry.
        """
        collection = self.ctx.collection(self.entity.collection)
        found = weaviate_client.existing_uuids(self.client, collection, [o.uuid for o in objects])
        lost = [o for o in objects if o.uuid not in found]
        if not lost:
            return
        weaviate_client.delete_by_uuid(self.client, collection, [o.uuid for o in lost])
        refused = self.ctx.send(self.client, collection, lost)
        found = weaviate_client.existing_uuids(self.client, collection, [o.uuid for o in lost])
        with self._counting:
            self.report.reindexed += len(lost)
        for i, o in enumerate(lost):
            if i in refused or o.uuid not in found:
                why = refused.get(i, "still not found by id after being deleted and written again")
                self._processor.fail_landed(o.row_id, f"{self.entity.collection} row {o.row_id}: {why}")

    def _expected_vectors(self, o: ObjectWrite) -> tuple[str, ...]:
        """The named vectors an object must carry: those whose source text is not empty."""
        if self._mode == "weaviate":
            return tuple(sorted(vector_texts(self.entity, o.properties, self.settings.embed_max_chars)))
        return tuple(sorted(o.vectors))

    def _references(self, ids: Sequence[int]) -> tuple[dict[int, dict[str, list[str]]], dict[int, list[int]]]:
        """Each source row's reference lists: live edges to live rows whose object exists; and the
        digests of those references (each relation and target once) for the object's range digest.

        An edge whose target row is live but has no object yet (its own sync
        has not run, or failed) is left out and logged as deferred; the edges
        asset writes it once the target exists.
        """
        out: dict[int, dict[str, list[str]]] = {}
        written: dict[int, set[tuple[str, int]]] = {}
        rels = relations_from(self.entity.collection)
        by_relation = reading.live_edges_from(self.engine, rels, ids)
        for rel in rels:
            edges = by_relation[rel.name]
            present = self._present.setdefault(rel.target, set())
            unknown = {t for pairs in edges.values() for _, t in pairs} - present
            if unknown and rel.target in self._trusted:
                present.update(unknown)
            elif unknown:
                by_uuid = {object_uuid(rel.target, t): t for t in unknown}
                found = weaviate_client.existing_uuids(self.client, self.ctx.collection(rel.target), by_uuid)
                present.update(by_uuid[u] for u in found)
            for source_id, pairs in edges.items():
                for edge_id, target_id in pairs:
                    if target_id in present:
                        target = object_uuid(rel.target, target_id)
                        out.setdefault(source_id, {}).setdefault(rel.name, []).append(target)
                        written.setdefault(source_id, set()).add((rel.name, target_id))
                    else:
                        with self._counting:
                            self.report.deferred_references.add("target_not_in_weaviate", edge_id)
        return out, {
            source_id: [digests.edge_digest(name, target) for name, target in pairs]
            for source_id, pairs in written.items()
        }


@dataclass
class SweepReport:
    deleted: int = 0
    ids: list[int] = field(default_factory=list)  # the orphans found, every one


def sweep_orphans(
    engine: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    shards: Sequence[reading.Shard],
    collection: str | None = None,
) -> SweepReport:
    """Delete the objects of ``shards`` whose row is gone or soft-deleted (from ``collection``,
    by default the entity's alias).

    The live ids in the database are read first; a cursor walk over the stored
    ids (``source_id``) keeps only those not among them, and those are read
    again from the database before anything is deleted: a row inserted during
    the walk, whose object a concurrent run wrote, is not an orphan. Held at
    once: the live ids (a sorted array, 8 bytes each) and the candidates, never every object's uuid.
    """
    collection = collection or e.collection
    live = reading.live_id_set(engine, e, shards)
    candidates = weaviate_client.stored_source_ids(
        client, collection, keep=lambda sid: sid not in live and reading.in_shards(sid, shards)
    )
    alive_since = reading.live_ids_among(engine, e, sorted(candidates))
    orphans = sorted(sid for sid in candidates if sid not in alive_since)
    report = SweepReport(ids=orphans)
    if orphans:
        report.deleted = weaviate_client.delete_uuids(
            client, collection, [candidates[sid] for sid in orphans]
        )
    return report
