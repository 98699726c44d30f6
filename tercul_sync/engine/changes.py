"""Change detection: cursors, changed rows, deleted rows, changed edges.

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

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, RowMapping

from tercul_sync.engine import reading
from tercul_sync.engine.id_tables import IdCounts
from tercul_sync.engine.objects import as_utc
from tercul_sync.engine.registry import ENTITIES, EntityType, Relation, entity, relations_from, relations_to

ID_CHUNK = 5_000  # ids per IN (...) list


def _aware(value: datetime | str | None) -> datetime | None:
    return None if value is None else as_utc(value)


@dataclass(frozen=True)
class Cursor:
    """How far a sync of one table (and shard) has got: the newest ``(updated_at, id)``, the newest
    ``deleted_at``, and when it last read the delete log (``delete_log.py``; None without the log)."""

    updated_at: datetime | None = None
    id: int = 0
    deleted_at: datetime | None = None
    removed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "id": self.id,
            "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
            "removed_at": self.removed_at.isoformat() if self.removed_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Cursor | None:
        if not data:
            return None
        return cls(
            _aware(data.get("updated_at")),
            int(data.get("id") or 0),
            _aware(data.get("deleted_at")),
            _aware(data.get("removed_at")),
        )

    def advanced(self, updated_at: Any, row_id: int, deleted_at: Any) -> Cursor:
        """The cursor moved past one more row (never backwards)."""
        u = _aware(updated_at)
        new_u, new_id = self.updated_at, self.id
        if u is not None and (new_u is None or (u, row_id) > (new_u, new_id)):
            new_u, new_id = u, row_id
        return replace(self, updated_at=new_u, id=new_id, deleted_at=_later(self.deleted_at, deleted_at))

    def log_read(self, at: datetime | None) -> Cursor:
        """The cursor once the delete log was read at ``at`` (``delete_log.mark``; None: no log)."""
        return replace(self, removed_at=_later(self.removed_at, at))


def _later(mine: datetime | None, seen: Any) -> datetime | None:
    at = _aware(seen)
    return mine if at is None or (mine is not None and mine >= at) else at


def high_water(
    engine: Engine, table: sa.Table, shards: Sequence[reading.Shard], id_column: str = "id"
) -> Cursor:
    """The newest change in ``shards`` right now: the cursor a full pass starting now may record."""
    scope = reading.shards_clause(table.c[id_column], shards)
    with engine.connect() as conn:
        newest = conn.execute(
            sa.select(table.c.updated_at, table.c.id)
            .where(scope)
            .order_by(table.c.updated_at.desc(), table.c.id.desc())
            .limit(1)
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
    engine: Engine,
    e: EntityType,
    shards: Sequence[reading.Shard],
    cursor: Cursor,
    overlap: timedelta,
    page_size: int,
) -> Iterator[list[RowMapping]]:
    """Rows of ``shards`` updated after ``cursor - overlap``, soft-deleted ones included,
    by (updated_at, id)."""
    t = reading.table_for(e)
    cols = reading.row_columns(e, extra=[e.soft_delete_column])
    after = _start(cursor, overlap)
    with reading.read_connection(engine) as conn:
        while True:
            q = sa.select(*cols).where(reading.shards_clause(t.c.id, shards))
            if after is not None:
                q = q.where(
                    sa.tuple_(t.c.updated_at, t.c.id)
                    > sa.tuple_(sa.literal(after[0], t.c.updated_at.type), sa.literal(after[1]))
                )
            q = q.order_by(t.c.updated_at, t.c.id).limit(page_size)
            page = list(conn.execute(q).mappings())
            if not page:
                return
            yield page
            if len(page) < page_size:
                return
            # updated_at is NOT NULL, so the last row always has one.
            after = (as_utc(page[-1]["updated_at"]), page[-1]["id"])


ShardCursors = Mapping[str, tuple[reading.Shard, Cursor]]  # {shard key: (shard, its cursor)}


def _by_shard(rows: Sequence[Any], id_of: Callable[[Any], int], scopes: ShardCursors) -> dict[str, list[Any]]:
    """``rows`` split among the shards of ``scopes`` (shards do not overlap; a row of none is dropped)."""
    out: dict[str, list[Any]] = {key: [] for key in scopes}
    for row in rows:
        key = next((k for k, (shard, _) in scopes.items() if shard.contains(id_of(row))), None)
        if key is not None:
            out[key].append(row)
    return out


def soft_deleted_since(
    engine: Engine, e: EntityType, scopes: ShardCursors, overlap: timedelta
) -> dict[str, list[tuple[int, Any]]]:
    """Per shard, ``(id, deleted_at)`` of its rows soft-deleted after its cursor's
    ``deleted_at - overlap``. One query for every shard: without an index on ``deleted_at`` each
    query scans the whole table."""
    if not scopes:
        return {}
    t = reading.table_for(e)
    deleted = t.c[e.soft_delete_column]
    after = [
        sa.and_(
            reading.shards_clause(t.c.id, [shard]),
            sa.true() if cursor.deleted_at is None else deleted > cursor.deleted_at - overlap,
        )
        for shard, cursor in scopes.values()
    ]
    q = sa.select(t.c.id, deleted).where(deleted.is_not(None), sa.or_(*after))
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(q)]
    return _by_shard(rows, lambda r: r[0], scopes)


def _changed_since(
    t: sa.Table, soft_delete_column: str, cursor: Cursor, overlap: timedelta
) -> sa.ColumnElement[bool]:
    """Rows updated, or soft-deleted, after ``cursor - overlap`` (every row when the cursor is empty).

    Without an overlap, "after" is by ``(updated_at, id)`` as the cursor recorded them: rows that
    share the cursor's ``updated_at`` (a bulk change) are not read again on every run."""
    start = _start(cursor, overlap)
    if start is None:
        return sa.true()
    changed: sa.ColumnElement[bool] = sa.tuple_(t.c.updated_at, t.c.id) > sa.tuple_(
        sa.literal(start[0], t.c.updated_at.type), sa.literal(start[1])
    )
    if cursor.deleted_at is not None:
        changed = sa.or_(changed, t.c[soft_delete_column] > cursor.deleted_at - overlap)
    return changed


def changed_edges(engine: Engine, scopes: ShardCursors, overlap: timedelta) -> dict[str, list[RowMapping]]:
    """Per shard (by source id), its edge rows changed or soft-deleted after its cursor, deleted
    ones included, in id order. One query for every shard (one scan of ``edges``)."""
    if not scopes:
        return {}
    edges = reading.edges_table()
    q = sa.select(
        edges.c.id,
        edges.c.source_table,
        edges.c.source_id,
        edges.c.relation,
        edges.c.updated_at,
        edges.c.deleted_at,
    )
    changed = [
        sa.and_(
            reading.shards_clause(edges.c.source_id, [shard]),
            _changed_since(edges, "deleted_at", cursor, overlap),
        )
        for shard, cursor in scopes.values()
    ]
    with engine.connect() as conn:
        rows = list(conn.execute(q.where(sa.or_(*changed)).order_by(edges.c.id)).mappings())
    return _by_shard(rows, lambda r: r["source_id"], scopes)


def changed_target_ids(
    engine: Engine, e: EntityType, cursor: Cursor, overlap: timedelta
) -> list[tuple[int, Any, Any]]:
    """``(id, updated_at, deleted_at)`` of the rows of ``e`` (any shard) changed or
    soft-deleted after the cursor."""
    t = reading.table_for(e)
    q = sa.select(t.c.id, t.c.updated_at, t.c[e.soft_delete_column])
    q = q.where(_changed_since(t, e.soft_delete_column, cursor, overlap))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def sources_pointing_at(
    engine: Engine, target: EntityType, target_ids: Sequence[int], shards: Sequence[reading.Shard]
) -> dict[str, set[int]]:
    """``{source collection: ids}`` of rows with an edge (live or not) to one of ``target_ids``."""
    out: dict[str, set[int]] = {}
    if not target_ids:
        return out
    edges = reading.edges_table()
    ids = sorted(set(target_ids))
    with engine.connect() as conn:
        for rel in relations_to(target.collection):
            for start in range(0, len(ids), ID_CHUNK):
                q = sa.select(edges.c.source_id).where(
                    reading.relation_clause(edges, rel),
                    edges.c.target_id.in_(ids[start : start + ID_CHUNK]),
                    reading.shards_clause(edges.c.source_id, shards),
                )
                out.setdefault(rel.source, set()).update(conn.execute(q.distinct()).scalars())
    return out


def _references_per_source(rel: Relation, low: int | None = None, high: int | None = None) -> sa.Select[Any]:
    """``(source id, distinct targets)`` of live edges of ``rel`` between live rows (with sources in
    ``[low, high)`` when given): the references each source of ``rel`` should carry.

    ``count(DISTINCT target_id) ... GROUP BY source_id``, not ``count(*)`` over a ``DISTINCT``
    subquery: PostgreSQL estimates the edges' correlated filters (table, relation) far too low,
    plans the ``DISTINCT`` as a hash aggregate for a few thousand pairs, and at a million edges
    spills it into hundreds of thousands of batches (150 s for one relation, measured); a
    per-group distinct count sorts instead (0.7 s).
    """
    edges = reading.edges_table()
    src, tgt = entity(rel.source), entity(rel.target)
    s, t = reading.table_for(src).alias("s"), reading.table_for(tgt).alias("t")
    return (
        sa.select(edges.c.source_id, sa.func.count(sa.distinct(edges.c.target_id)).label("n"))
        .join(s, s.c.id == edges.c.source_id)
        .join(t, t.c.id == edges.c.target_id)
        .where(
            edges.c.deleted_at.is_(None),
            reading.relation_clause(edges, rel),
            s.c[src.soft_delete_column].is_(None),
            t.c[tgt.soft_delete_column].is_(None),
            edges.c.source_id >= low if low is not None else sa.true(),
            edges.c.source_id < high if high is not None else sa.true(),
        )
        .group_by(edges.c.source_id)
    )


def valid_reference_count(
    engine: Engine, collection: str, low: int | None = None, high: int | None = None
) -> int:
    """Distinct (source, relation, target) pairs of live edges between live rows, for one source collection.

    Compared with the references Weaviate holds (the sum of ``sync_ref_count``)
    it tells, without reading every object, whether references were lost or
    left behind by changes no cursor sees (hard-deleted edges or targets).
    """
    with engine.connect() as conn:
        total = 0
        for rel in relations_from(collection):
            per_source = _references_per_source(rel, low, high).subquery()
            summed = sa.select(sa.func.coalesce(sa.func.sum(per_source.c.n), 0))
            total += int(conn.execute(summed).scalar_one())
        return total


def valid_reference_counts(
    engine: Engine, collection: str, low: int | None = None, high: int | None = None
) -> dict[int, int]:
    """``{source id: references it should carry}`` for the sources of ``collection`` that have any."""
    out: dict[int, int] = {}
    with engine.connect() as conn:
        for rel in relations_from(collection):
            for source_id, n in conn.execute(_references_per_source(rel, low, high)):
                out[source_id] = out.get(source_id, 0) + int(n)
    return out


def reference_count_table(engine: Engine, collection: str) -> IdCounts:
    """``valid_reference_counts`` for every source of ``collection``, compactly (held while every
    object is walked): one query over the relations, in source id order, streamed."""
    rels = relations_from(collection)
    if not rels:
        return IdCounts()
    per_relation = sa.union_all(*(_references_per_source(rel) for rel in rels)).subquery()
    q = (
        sa.select(per_relation.c.source_id, sa.func.sum(per_relation.c.n))
        .group_by(per_relation.c.source_id)
        .order_by(per_relation.c.source_id)
    )
    options = {"stream_results": True, "yield_per": reading.STREAM_ROWS}
    with engine.connect().execution_options(**options) as conn:
        return IdCounts((int(i), int(n)) for i, n in conn.execute(q))


# --- table marks: has anything changed at all? ------------------------------------------------

TableMarks = dict[str, dict[str, Any]]  # table -> {"updated_at", "deleted_at", "count"}


def table_marks(engine: Engine) -> TableMarks:
    """Where every table stands: newest ``updated_at``, newest ``deleted_at`` and row count.

    One row per entity table and one for ``edges``, as plain JSON values, for
    the change sensor to compare from one check to the next. Three aggregates
    per table, one connection for all: the newest ``updated_at`` walks the
    ``(updated_at, id)`` index; the count and the newest ``deleted_at`` scan
    the table (milliseconds at Tercul's size). An insert, an update, a soft
    delete and a hard delete each move one of the three.
    """
    tables = [(reading.table_for(e), e.soft_delete_column) for e in ENTITIES]
    tables.append((reading.edges_table(), "deleted_at"))
    out: TableMarks = {}
    with engine.connect() as conn:
        for t, deleted_column in tables:
            updated, deleted, count = conn.execute(
                sa.select(sa.func.max(t.c.updated_at), sa.func.max(t.c[deleted_column]), sa.func.count())
            ).one()
            u, d = _aware(updated), _aware(deleted)
            out[t.name] = {
                "updated_at": u.isoformat() if u else None,
                "deleted_at": d.isoformat() if d else None,
                "count": int(count),
            }
    return out


def changed_tables(before: TableMarks, after: TableMarks) -> list[str]:
    """The tables whose marks differ between two checks (a table new in ``after`` counts), by name."""
    return sorted(name for name, marks in after.items() if before.get(name) != marks)
