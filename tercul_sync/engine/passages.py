"""Passages: long texts split into chunks, each an object of the ``Passage`` collection, kept exactly in step.

A passage's id is ``generate_uuid5("Passage:<parent collection>:<parent id>:<property>:<position>")``,
so a re-run replaces and never duplicates. It carries its text, position,
language, the parent's filterable fields (``PassageSpec.copied``), a
``parent`` reference and, in ``client`` mode, its vector. Its ``sync_hash``
covers what it stores, so when a body changes only the passages whose text
(or position, or copied fields) changed are rewritten and re-embedded, and
the passages past the new end are deleted. A parent that is soft-deleted or
removed loses all its passages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from weaviate.classes.aggregate import GroupByAggregate
from weaviate.classes.query import Filter

from tercul_sync.engine import digests, reading, weaviate_client
from tercul_sync.engine.batching import BatchProcessor, WriteReport
from tercul_sync.engine.chunking import split_text
from tercul_sync.engine.embedding import Embedder, EmbedStats, make_embedder
from tercul_sync.engine.objects import (
    HASH_PROPERTY,
    PARENT_HASH_PROPERTY,
    PASSAGE_COUNT_PROPERTY,
    ObjectWrite,
    chunk,
    content_hash,
    row_problem,
    to_weaviate_value,
)
from tercul_sync.engine.registry import (
    PASSAGE_COLLECTION,
    PASSAGE_PARENT_REFERENCE,
    PASSAGE_TEXT,
    EntityType,
    PassageSpec,
    object_uuid,
    passage_parents,
    uuid5_text,
)
from tercul_sync.engine.reports import MAX_SAMPLE, add_sample
from tercul_sync.engine.weaviate_schema import resolve
from tercul_sync.engine.writing import ObjectSyncReport, Row, SyncContext

PARENT_KEY = "parent_key"  # "<collection>:<id>", the filter every per-parent operation uses
PASSAGE_VECTOR = "text"


def parent_mark(e: EntityType, row: Row, target: str | None, digest: int | None = None) -> str:
    """A hash of everything a row's passages are cut from: texts, languages, copied values, the
    splitter's limits and the parent reference's collection; and the first passage's range digest
    (``digests.py``), which rides on it."""
    doc = {
        spec.property: {
            "text": row[spec.property] or "",
            "language": row[spec.language],
            "copied": {name: row[name] for name in spec.copied},
            "limits": [spec.max_chars, spec.overlap_chars],
        }
        for spec in e.passages
    }
    return content_hash({"passages": doc, "target": target or e.collection, "digest": digest}, {})


def _marker_uuid(e: EntityType, parent_id: int) -> str:
    """The passage that carries a parent's mark: the first of its first passage property."""
    return passage_uuid(e.collection, parent_id, e.passages[0].property, 0)


def parent_key(collection: str, parent_id: int) -> str:
    return f"{collection}:{parent_id}"


def passage_parent_id(key: str) -> int:
    """The parent row id in a failure report's key: ``parent_key``, or ``parent_key#position``."""
    return int(key.split("#", 1)[0].rsplit(":", 1)[1])


def passage_uuid(collection: str, parent_id: int, prop: str, position: int) -> str:
    return uuid5_text(f"{PASSAGE_COLLECTION}:{collection}:{parent_id}:{prop}:{position}")


def build_passages(
    e: EntityType, spec: PassageSpec, row: Row, parent_collection: str | None = None
) -> list[ObjectWrite]:
    """The passages of one row's long text, in order; none when the text is empty or blank.

    ``parent_collection`` is the collection the parent reference points at (by default the
    registry's name; behind an alias, the versioned collection, since Weaviate wants that there).
    """
    text = row[spec.property] or ""
    if not text.strip():
        return []
    by_name = {c.name: c for c in e.columns}
    common: dict[str, Any] = {
        "parent_collection": e.collection,
        "parent_id": row["id"],
        PARENT_KEY: parent_key(e.collection, row["id"]),
        "property": spec.property,
    }
    if row[spec.language] is not None:
        common["language"] = row[spec.language]
    for name in spec.copied:
        if row[name] is not None:
            common[name] = to_weaviate_value(by_name[name].kind, row[name])
    parent = {PASSAGE_PARENT_REFERENCE: [object_uuid(e.collection, row["id"])]}
    target = {PASSAGE_PARENT_REFERENCE: parent_collection or e.collection}
    out = []
    for c in split_text(text, spec.max_chars, spec.overlap_chars):
        props = {**common, "position": c.position, PASSAGE_TEXT: c.text}
        props[HASH_PROPERTY] = content_hash(props, {})
        uuid = passage_uuid(e.collection, row["id"], spec.property, c.position)
        out.append(ObjectWrite(row["id"], uuid, props, dict(parent), reference_collections=target))
    return out


@dataclass
class PassageReport:
    parents_read: int = 0
    passages: int = 0  # passages the live texts have
    unchanged: int = 0
    deleted: int = 0
    deleted_sample: list[Any] = field(default_factory=list)
    write: WriteReport = field(default_factory=WriteReport)
    embeddings: EmbedStats = field(default_factory=EmbedStats)
    embeddings_reused: int = 0  # vectors copied: a rebuild's old version, or a first passage rewritten
    parents_unchanged: int = 0  # parents skipped whole: their stored mark matched
    parents_matched_by_digest: int = 0  # full runs: parents in ranges whose digests matched, not read
    digest_ranges_read: int = 0  # ranges of parents whose digests differed, read whole
    swept: list[str] = field(default_factory=list)  # parent types whose passages were walked for orphans

    def as_sync_report(self) -> ObjectSyncReport:
        """The same figures in the shape every step summarizes."""
        return ObjectSyncReport(
            PASSAGE_COLLECTION,
            rows_read=self.passages,
            unchanged=self.unchanged,
            write=self.write,
            embeddings=self.embeddings,
        )


class PassageSyncer:
    """Writes the passages of parent rows, deletes the stale ones, through the batch processor."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self.report = PassageReport()
        # A first sync (Passage was empty when the step began): no stored mark, hash or count to read.
        self.collection_was_empty = False
        self._processor: BatchProcessor[ObjectWrite] = BatchProcessor(
            lambda items: ctx.send(ctx.client, ctx.collection(PASSAGE_COLLECTION), items),
            key_of=lambda o: f"{o.properties[PARENT_KEY]}#{o.properties['position']}",
            retry=ctx.settings.retry,
        )
        self.report.write = self._processor.report
        # Batches written while the next page is prepared (at most batches_in_flight at once).
        self._writing = ThreadPoolExecutor(
            ctx.settings.batches_in_flight, thread_name_prefix="tercul-passages"
        )
        self._in_flight: deque[Future[list[ObjectWrite]]] = deque()
        self._embedder: Embedder | None = None
        if ctx.settings.vectorizer == "client":
            self._embedder = ctx.embedder or make_embedder(ctx.settings)
            self.report.embeddings = self._embedder.stats
        self._collection = ctx.client.collections.use(ctx.collection(PASSAGE_COLLECTION))
        self._reuse_from = ctx.reuse_vectors_from.get(PASSAGE_COLLECTION)  # a rebuild's old version
        self._parents = {  # what a parent reference names: a versioned collection, never its alias
            p.collection: ctx.names.get(p.collection) or resolve(ctx.client, p.collection) or p.collection
            for p in passage_parents()
        }

    def sync_rows(self, e: EntityType, rows: Sequence[Row]) -> None:
        """Bring the passages of live ``rows`` in step: write what changed, delete past each new end."""
        live = (
            [r for r in rows if r[e.soft_delete_column] is None]
            if rows and e.soft_delete_column in rows[0]
            else rows
        )
        live_ids = {r["id"] for r in live}  # by id: comparing rows themselves is slow (and quadratic here)
        self.delete_parents(e, [r["id"] for r in rows if r["id"] not in live_ids])
        if not live:
            return
        self.report.parents_read += len(live)
        target = self.parent_target(e)
        fingerprint = digests.passage_fingerprint(e, self.ctx.settings, target)
        digest_of = {row["id"]: digests.stored_digest(row, fingerprint) for row in live}
        marks = {row["id"]: parent_mark(e, row, target, digest_of[row["id"]]) for row in live}
        skip_stored = self.ctx.force or self.collection_was_empty
        stored_marks = {} if skip_stored else self._stored_marks(e, [r["id"] for r in live])
        changed = [r for r in live if stored_marks.get(r["id"]) != marks[r["id"]]]
        self.report.parents_unchanged += len(live) - len(changed)
        if not changed:
            return
        objects: list[ObjectWrite] = []
        counts: dict[str, int] = {}
        parents = weaviate_client.existing_uuids(  # a parent Weaviate refused: its passages would be too
            self.ctx.client,
            self.ctx.collection(e.collection),
            [object_uuid(e.collection, r["id"]) for r in changed],
        )
        markers: set[str] = set()
        for row in changed:
            problem = row_problem(e, row)
            if problem:  # reported once, with the parent's key; its passages are left as they were
                self._processor.reject(parent_key(e.collection, row["id"]), problem)
                continue
            mine = [p for spec in e.passages for p in build_passages(e, spec, row, target)]
            if mine and object_uuid(e.collection, row["id"]) not in parents:
                message = f"{e.collection} {row['id']} has no object in Weaviate (see its own failure report)"
                self._processor.reject(parent_key(e.collection, row["id"]), message)
                continue
            marker = _marker_uuid(e, row["id"])
            for p in mine:
                if p.uuid == marker:  # the parent's mark rides on its first passage, outside its hash
                    p.properties[PARENT_HASH_PROPERTY] = marks[row["id"]]
                    p.properties[PASSAGE_COUNT_PROPERTY] = len(mine)
                    if digest_of[row["id"]] is not None:
                        p.properties[digests.DIGEST_PROPERTY] = digest_of[row["id"]]
                    markers.add(p.uuid)
            counts[parent_key(e.collection, row["id"])] = len(mine)
            objects += mine
        self.report.passages += len(objects)
        self._delete_tails(counts)
        stored = (
            {}
            if self.collection_was_empty
            else weaviate_client.stored_hashes(
                self.ctx.client, self.ctx.collection(PASSAGE_COLLECTION), [o.uuid for o in objects]
            )
        )
        fresh = [
            o
            for o in objects
            if self.ctx.force or stored.get(o.uuid, "") != o.properties[HASH_PROPERTY] or o.uuid in markers
        ]
        self.report.unchanged += len(objects) - len(fresh)
        if self._embedder is not None and fresh:
            # A first passage rewritten only for its parent's new mark keeps its stored vector.
            same = [o for o in fresh if stored.get(o.uuid, "") == o.properties[HASH_PROPERTY]]
            todo = [o for o in fresh if o not in same]
            todo += self._reuse_vectors(same, self.ctx.collection(PASSAGE_COLLECTION))
            if self._reuse_from:
                todo = self._reuse_vectors(todo, self._reuse_from)
            vectors = self._embedder.embed_passages([str(o.properties[PASSAGE_TEXT]) for o in todo])
            for o, vector in zip(todo, vectors, strict=True):
                o.vectors[PASSAGE_VECTOR] = vector
        settings = self.ctx.settings
        for batch in chunk(fresh, settings.batch_size, settings.max_batch_bytes, lambda o: o.size):
            self._in_flight.append(self._writing.submit(self._processor.write_batch, batch))
            while len(self._in_flight) > settings.batches_in_flight:
                self._in_flight.popleft().result()  # raises what the write raised

    def parent_target(self, e: EntityType) -> str:
        """The collection the parent references of ``e``'s passages name."""
        return self._parents.get(e.collection) or e.collection

    def flush(self) -> None:
        """Wait for every batch in flight; raises what a write raised (a refusal stops the step)."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def close(self) -> None:
        """Stop the writer threads (after ``flush``; on an error, once the writes in flight end)."""
        self._writing.shutdown(wait=True, cancel_futures=True)

    def _stored_marks(self, e: EntityType, ids: list[int]) -> dict[int, str | None]:
        """``{parent id: mark}`` stored on the first passages of the parents ``ids`` that have any."""
        by_uuid = {_marker_uuid(e, i): i for i in ids}
        stored = weaviate_client.stored_hashes(
            self.ctx.client, self.ctx.collection(PASSAGE_COLLECTION), list(by_uuid), PARENT_HASH_PROPERTY
        )
        return {by_uuid[u]: mark for u, mark in stored.items()}

    def _reuse_vectors(self, fresh: list[ObjectWrite], source: str) -> list[ObjectWrite]:
        """Copy the vector of each passage whose content is the same in ``source`` (one query per
        page; a rebuild's old version, or the collection itself); return those still to embed."""
        if not fresh:
            return []
        old = weaviate_client.stored_vectors(
            self.ctx.client, source, [o.uuid for o in fresh], [PASSAGE_VECTOR], HASH_PROPERTY
        )
        todo = []
        for o in fresh:
            stored_hash, vectors = old.get(o.uuid, (None, {}))
            if stored_hash == o.properties[HASH_PROPERTY] and PASSAGE_VECTOR in vectors:
                o.vectors[PASSAGE_VECTOR] = vectors[PASSAGE_VECTOR]
                self.report.embeddings_reused += 1
            else:
                todo.append(o)
        return todo

    def _delete_tails(self, counts: Mapping[str, int]) -> None:
        """Delete the passages at or past each parent's new count (its text got shorter or empty)."""
        if not counts or self.collection_was_empty:
            return
        stored = self._stored_counts(list(counts))
        for key, had in stored.items():
            if had > counts.get(key, 0):
                where = Filter.by_property(PARENT_KEY).equal(key) & Filter.by_property(
                    "position"
                ).greater_or_equal(counts.get(key, 0))
                self._delete(where, key)

    def _stored_counts(self, keys: list[str]) -> dict[str, int]:
        """``{parent key: passages stored}`` for the parents among ``keys`` that have any (one query)."""
        out: dict[str, int] = {}
        for start in range(0, len(keys), weaviate_client.ID_CHUNK):
            part = keys[start : start + weaviate_client.ID_CHUNK]
            res = self._collection.aggregate.over_all(
                filters=Filter.by_property(PARENT_KEY).contains_any(part),
                group_by=GroupByAggregate(prop=PARENT_KEY, limit=len(part)),
                total_count=True,
            )
            for group in res.groups:
                out[str(group.grouped_by.value)] = int(group.total_count or 0)
        return out

    def delete_parents(self, e: EntityType, ids: Iterable[int]) -> None:
        """Delete every passage of the parents ``ids`` (soft-deleted or removed rows)."""
        keys = [parent_key(e.collection, i) for i in ids]
        for start in range(0, len(keys), weaviate_client.ID_CHUNK):
            part = keys[start : start + weaviate_client.ID_CHUNK]
            self._delete(Filter.by_property(PARENT_KEY).contains_any(part), part[0])

    def _delete(self, where: Any, sample: str) -> None:
        while True:  # delete_many removes at most QUERY_MAXIMUM_RESULTS per call
            res = self._collection.data.delete_many(where=where)
            weaviate_client.check_deleted(self._collection, res)
            self.report.deleted += res.successful
            if res.successful:
                add_sample(self.report.deleted_sample, [sample])
            if res.matches == 0 or res.successful == 0:
                return

    def sweep(self, e: EntityType, shards: Sequence[reading.Shard]) -> None:
        """Delete the passages whose parent row is gone or soft-deleted (a walk over parent ids)."""
        self.report.swept.append(e.collection)
        stored: set[int] = set()
        for o in self._collection.iterator(
            return_properties=["parent_collection", "parent_id"], cache_size=5_000
        ):
            if o.properties.get("parent_collection") == e.collection:
                stored.add(int(str(o.properties.get("parent_id"))))
        in_scope = {i for i in stored if reading.in_shards(i, shards)}
        live = reading.live_id_set(self.ctx.db, e, shards)
        self.delete_parents(e, sorted(i for i in in_scope if i not in live))


def passages_metadata(report: PassageReport) -> dict[str, Any]:
    return {
        "parents_read": report.parents_read,
        "parents_unchanged": report.parents_unchanged,
        "parents_matched_by_digest": report.parents_matched_by_digest,
        "digest_ranges_read": report.digest_ranges_read,
        "passages": report.passages,
        "passages_unchanged": report.unchanged,
        "passages_deleted": report.deleted,
        "deleted_parent_sample": report.deleted_sample[:MAX_SAMPLE],
        "parents_swept": ", ".join(report.swept) or "none",
    }
