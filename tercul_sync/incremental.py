"""Change detection for the incremental sync: cursors, changed rows, deleted rows.

A cursor is the newest ``(updated_at, id)`` a sync has covered, plus the
newest ``deleted_at`` (GORM's soft delete sets ``deleted_at`` without
touching ``updated_at``). The next run reads from ``cursor - overlap``: a
transaction that commits late with an older ``updated_at`` is still seen if
it is inside the overlap window, and re-reading a row that did not change
costs one hash comparison, not a write.

Cursors live in Dagster's own records (each materialization's metadata,
per shard), never in Tercul's database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import weaviate
from sqlalchemy.engine import Engine, RowMapping

from tercul_sync import source, weaviate_io
from tercul_sync.edges import touched_sources
from tercul_sync.registry import RELATIONS, EntityType, entity, object_uuid
from tercul_sync.sync import ObjectSyncer, ObjectSyncReport, WriteSettings, sweep_orphans


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite without type affinity hands back text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    """How far a sync of one table (and shard) has got."""

    updated_at: datetime | None = None
    id: int = 0
    deleted_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "id": self.id,
            "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Cursor | None:
        if not data:
            return None
        return cls(_aware(data.get("updated_at")), int(data.get("id") or 0), _aware(data.get("deleted_at")))

    def advanced(self, updated_at: Any, row_id: int, deleted_at: Any) -> Cursor:
        """The cursor moved past one more row (never backwards)."""
        u, d = _aware(updated_at), _aware(deleted_at)
        new_u, new_id = self.updated_at, self.id
        if u is not None and (new_u is None or (u, row_id) > (new_u, new_id)):
            new_u, new_id = u, row_id
        new_d = self.deleted_at if d is None or (self.deleted_at and self.deleted_at >= d) else d
        return Cursor(new_u, new_id, new_d)


def _shard_clause(t: sa.Table, id_column: str, shards: Sequence[source.Shard]) -> sa.ColumnElement[bool]:
    return sa.or_(*(s.clause(t.c[id_column]) for s in shards)) if shards else sa.true()


def high_water(engine: Engine, table: sa.Table, shards: Sequence[source.Shard], id_column: str = "id") -> Cursor:
    """The newest change in ``shards`` right now: the cursor a full pass starting now may record."""
    scope = _shard_clause(table, id_column, shards)
    with engine.connect() as conn:
        newest = conn.execute(
            sa.select(table.c.updated_at, table.c.id).where(scope).order_by(table.c.updated_at.desc(), table.c.id.desc()).limit(1)
        ).first()
        deleted = conn.execute(sa.select(sa.func.max(table.c.deleted_at)).where(scope)).scalar()
    if newest is None:
        return Cursor(None, 0, _aware(deleted))
    return Cursor(_aware(newest[0]), newest[1], _aware(deleted))


def _start(cursor: Cursor, overlap: timedelta) -> tuple[datetime, int] | None:
    if cursor.updated_at is None:
        return None
    if overlap > timedelta(0):
        return cursor.updated_at - overlap, -(1 << 62)
    return cursor.updated_at, cursor.id


def iter_changed_pages(
    engine: Engine, e: EntityType, shards: Sequence[source.Shard], cursor: Cursor, overlap: timedelta, page_size: int
) -> Iterator[list[RowMapping]]:
    """Rows of ``shards`` updated after ``cursor - overlap``, soft-deleted ones included, by (updated_at, id)."""
    t = source.table_for(e)
    cols = [t.c.id, t.c[e.soft_delete_column], *(t.c[c.name] for c in e.property_columns)]
    after = _start(cursor, overlap)
    while True:
        q = sa.select(*cols).where(_shard_clause(t, "id", shards))
        if after is not None:
            q = q.where(sa.tuple_(t.c.updated_at, t.c.id) > sa.tuple_(sa.literal(after[0], t.c.updated_at.type), sa.literal(after[1])))
        q = q.order_by(t.c.updated_at, t.c.id).limit(page_size)
        with engine.connect() as conn:
            page = list(conn.execute(q).mappings())
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = (_aware(page[-1]["updated_at"]), page[-1]["id"])


def soft_deleted_since(
    engine: Engine, e: EntityType, shards: Sequence[source.Shard], cursor: Cursor, overlap: timedelta
) -> list[tuple[int, Any]]:
    """``(id, deleted_at)`` of rows soft-deleted after ``cursor.deleted_at - overlap``."""
    t = source.table_for(e)
    q = sa.select(t.c.id, t.c[e.soft_delete_column]).where(_shard_clause(t, "id", shards), t.c[e.soft_delete_column].is_not(None))
    if cursor.deleted_at is not None:
        q = q.where(t.c[e.soft_delete_column] > cursor.deleted_at - overlap)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def changed_edges(engine: Engine, shards: Sequence[source.Shard], cursor: Cursor, overlap: timedelta) -> list[RowMapping]:
    """Edge rows of ``shards`` (by source id) changed or soft-deleted after the cursor, deleted ones included."""
    edges = source.edges_table()
    q = sa.select(edges.c.id, edges.c.source_table, edges.c.source_id, edges.c.relation, edges.c.updated_at, edges.c.deleted_at)
    q = q.where(_shard_clause(edges, "source_id", shards))
    start = _start(cursor, overlap)
    if start is not None:
        changed = edges.c.updated_at >= start[0]
        if cursor.deleted_at is not None:
            changed = sa.or_(changed, edges.c.deleted_at > cursor.deleted_at - overlap)
        q = q.where(changed)
    with engine.connect() as conn:
        return list(conn.execute(q.order_by(edges.c.id)).mappings())


def changed_target_ids(engine: Engine, e: EntityType, cursor: Cursor, overlap: timedelta) -> list[tuple[int, Any, Any]]:
    """``(id, updated_at, deleted_at)`` of rows of ``e`` (any shard) changed or soft-deleted after the cursor."""
    t = source.table_for(e)
    q = sa.select(t.c.id, t.c.updated_at, t.c[e.soft_delete_column])
    start = _start(cursor, overlap)
    if start is not None:
        changed = t.c.updated_at >= start[0]
        if cursor.deleted_at is not None:
            changed = sa.or_(changed, t.c[e.soft_delete_column] > cursor.deleted_at - overlap)
        q = q.where(changed)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def sources_pointing_at(
    engine: Engine, target: EntityType, target_ids: Sequence[int], shards: Sequence[source.Shard]
) -> dict[str, set[int]]:
    """``{source collection: ids}`` of rows with an edge (live or not) to one of ``target_ids``."""
    out: dict[str, set[int]] = {}
    if not target_ids:
        return out
    edges = source.edges_table()
    ids = sorted(set(target_ids))
    with engine.connect() as conn:
        for rel in RELATIONS:
            if rel.target != target.collection:
                continue
            src = entity(rel.source)
            for start in range(0, len(ids), 5_000):
                q = sa.select(edges.c.source_id).where(
                    edges.c.source_table == src.table,
                    edges.c.relation == rel.name,
                    edges.c.target_table == target.table,
                    edges.c.target_id.in_(ids[start : start + 5_000]),
                    _shard_clause(edges, "source_id", shards),
                )
                out.setdefault(rel.source, set()).update(conn.execute(q.distinct()).scalars())
    return out


def valid_reference_count(engine: Engine, collection: str) -> int:
    """Distinct (source, relation, target) pairs of live edges between live rows, for one source collection.

    Compared with the references Weaviate holds (the sum of ``sync_ref_count``)
    it tells, without reading every object, whether references were lost or
    left behind by changes no cursor sees (hard-deleted edges or targets).
    """
    edges = source.edges_table()
    total = 0
    with engine.connect() as conn:
        for rel in RELATIONS:
            if rel.source != collection:
                continue
            src, tgt = entity(rel.source), entity(rel.target)
            s, t = source.table_for(src).alias("s"), source.table_for(tgt).alias("t")
            pairs = (
                sa.select(edges.c.source_id, edges.c.target_id)
                .join(s, s.c.id == edges.c.source_id)
                .join(t, t.c.id == edges.c.target_id)
                .where(
                    edges.c.deleted_at.is_(None),
                    source.relation_clause(edges, rel),
                    s.c[src.soft_delete_column].is_(None),
                    t.c[tgt.soft_delete_column].is_(None),
                )
                .distinct()
                .subquery()
            )
            total += int(conn.execute(sa.select(sa.func.count()).select_from(pairs)).scalar_one())
    return total


# --- Running a sync in one of its modes (used by the assets; free of Dagster) ---------------

FULL, INCREMENTAL, SWEEP = "full", "incremental", "sweep"


@dataclass
class EntityRun:
    """The outcome of one entity step, whatever its mode."""

    report: ObjectSyncReport
    rows_changed: int = 0
    deleted: int = 0
    deleted_sample: list[int] = field(default_factory=list)
    swept: bool = False
    cursors: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def run_entity(
    engine: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    shards: dict[str, source.Shard],
    mode: str,
    previous: dict[str, Cursor | None],
    settings: WriteSettings,
    overlap: timedelta,
) -> EntityRun:
    """Full: every live row of each shard. Incremental: rows changed since each shard's cursor.
    Sweep: only delete objects whose row is gone. A shard's cursor moves unless a write still failed transiently."""
    syncer = ObjectSyncer(engine, client, e, settings)
    run = EntityRun(syncer.report, cursors={k: (c.to_json() if c else None) for k, c in previous.items()})
    table = source.table_for(e)
    for key, shard in shards.items():
        if mode == SWEEP:
            break
        gave_up_before = syncer.report.write.gave_up
        cursor = previous.get(key)
        if mode == FULL or cursor is None:
            new = high_water(engine, table, [shard])  # read before the scan: later changes stay ahead of it
            syncer.sync_shards([shard])
        else:
            new = cursor
            for page in iter_changed_pages(engine, e, [shard], cursor, overlap, settings.batch_size):
                run.rows_changed += len(page)
                syncer.write_rows([r for r in page if r[e.soft_delete_column] is None])
                run.deleted += _delete(client, e, [r["id"] for r in page if r[e.soft_delete_column] is not None], run)
                for r in page:
                    new = new.advanced(r["updated_at"], r["id"], r[e.soft_delete_column])
            gone = soft_deleted_since(engine, e, [shard], cursor, overlap)
            run.rows_changed += len(gone)
            run.deleted += _delete(client, e, [i for i, _ in gone], run)
            for row_id, deleted_at in gone:
                new = new.advanced(None, row_id, deleted_at)
        # Rows Weaviate refused for good are in the failure report and do not hold the cursor back
        # (they would stall it for ever); rows still failing transiently do.
        if syncer.report.write.gave_up == gave_up_before:
            run.cursors[key] = new.to_json()
    # Rows removed outright leave no trace to follow: compare counts, sweep when they differ.
    live = source.count_live(engine, e)
    if mode != INCREMENTAL or weaviate_io.count_objects(client, e.collection) != live:
        sweep = sweep_orphans(engine, client, e, list(shards.values()))
        run.swept = True
        run.deleted += sweep.deleted
        run.deleted_sample.extend(sweep.sample_ids[: 10 - len(run.deleted_sample)])
    return run


def _delete(client: weaviate.WeaviateClient, e: EntityType, ids: list[int], run: EntityRun) -> int:
    if not ids:
        return 0
    run.deleted_sample.extend(ids[: max(0, 10 - len(run.deleted_sample))])
    return weaviate_io.delete_uuids(client, e.collection, [object_uuid(e.collection, i) for i in ids])


def edge_targets() -> list[EntityType]:
    return [entity(c) for c in sorted({r.target for r in RELATIONS})]


def edge_sources() -> list[EntityType]:
    return [entity(c) for c in sorted({r.source for r in RELATIONS})]


@dataclass
class EdgesRun:
    reports: list[ObjectSyncReport]
    edges_changed: int = 0
    changed_edge_ids: list[int] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    cursors: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def _target_high_water(engine: Engine) -> dict[str, Any]:
    """Newest change of each target table (all shards): the same for every edges shard."""
    return {t.table: high_water(engine, source.table_for(t), []).to_json() for t in edge_targets()}


def run_edges(
    engine: Engine,
    client: weaviate.WeaviateClient,
    shards: dict[str, source.Shard],
    mode: str,
    previous: dict[str, dict[str, Any] | None],
    settings: WriteSettings,
    overlap: timedelta,
) -> EdgesRun:
    """Full: rewrite every source object whose reference lists changed. Incremental: only the
    sources of changed edges and of changed target rows, then a count check per source type
    that falls back to the full pass for that type when references were lost another way."""
    syncers = {e.collection: ObjectSyncer(engine, client, e, settings) for e in edge_sources()}
    run = EdgesRun([s.report for s in syncers.values()], cursors=dict(previous))

    def gave_up() -> int:
        return sum(s.report.write.gave_up for s in syncers.values())

    target_marks: dict[str, Any] | None = None
    # Target tables are read whole, whatever the shard: each distinct cursor is read once per run.
    changed_targets: dict[tuple[str, str], list[tuple[int, Any, Any]]] = {}
    for key, shard in shards.items():
        before = gave_up()
        cursors = previous.get(key)
        if mode == FULL or not cursors:
            target_marks = target_marks or _target_high_water(engine)
            marks = {"edges": high_water(engine, source.edges_table(), [shard], id_column="source_id").to_json(), **target_marks}
            for s in syncers.values():
                s.sync_shards([shard])
        else:
            marks = dict(cursors)
            edge_cursor = Cursor.from_json(cursors.get("edges")) or Cursor()
            rows = changed_edges(engine, [shard], edge_cursor, overlap)
            run.edges_changed += len(rows)
            run.changed_edge_ids.extend(r["id"] for r in rows)
            touched = touched_sources([(r["id"], r["source_table"], r["source_id"], r["relation"]) for r in rows], [shard])
            for r in rows:
                edge_cursor = edge_cursor.advanced(r["updated_at"], r["id"], r["deleted_at"])
            marks["edges"] = edge_cursor.to_json()
            for t in edge_targets():
                c = Cursor.from_json(cursors.get(t.table)) or Cursor()
                memo_key = (t.table, repr(c))
                if memo_key not in changed_targets:
                    changed_targets[memo_key] = changed_target_ids(engine, t, c, overlap)
                changed = changed_targets[memo_key]
                for collection, ids in sources_pointing_at(engine, t, [i for i, _, _ in changed], [shard]).items():
                    touched.setdefault(collection, set()).update(ids)
                for row_id, updated_at, deleted_at in changed:
                    c = c.advanced(updated_at, row_id, deleted_at)
                marks[t.table] = c.to_json()
            for collection, ids in sorted(touched.items()):
                syncers[collection].sync_ids(sorted(ids))
        if gave_up() == before:
            run.cursors[key] = marks
    if mode == INCREMENTAL:
        for collection, s in syncers.items():
            if weaviate_io.reference_total(client, collection) != valid_reference_count(engine, collection):
                s.sync_shards(list(shards.values()))
                run.reconciled.append(collection)
    return run
