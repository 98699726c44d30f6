"""Classifying ``edges`` rows: which become references, and why the others do not.

References themselves are written by ``writing.ObjectSyncer`` as part of the
source object; this module answers which edges exist and which source
objects an edge window touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tercul_sync.engine import reading
from tercul_sync.engine.registry import RELATIONS, entity, relations_of_edge
from tercul_sync.engine.reports import MAX_SAMPLE, ReasonLog, add_sample

OK = "ok"
# Why a live edge makes no reference. Each is counted, with sample edge ids.
UNKNOWN_RELATION = "unknown_relation"
MISSING_SOURCE = "missing_source"
DELETED_SOURCE = "deleted_source"
MISSING_TARGET = "missing_target"
DELETED_TARGET = "deleted_target"


@dataclass(frozen=True)
class EdgeWindow:
    """The old ``EnqueueEdgeSync(batch_size, offset)``.

    Edge rows ``offset .. offset+batch_size``, in id order.
    """

    batch_size: int
    offset: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.offset < 0:
            raise ValueError(
                f"edge window needs batch_size >= 1 and offset >= 0, got {self.batch_size}, {self.offset}"
            )


@dataclass
class EdgeClassification:
    edges_read: int = 0  # live edges in scope
    valid: int = 0  # live edges joining two live rows of a known relation
    skipped: ReasonLog = field(default_factory=ReasonLog)

    def as_metadata(self) -> dict[str, object]:
        return {
            "edges_read": self.edges_read,
            "edges_valid": self.valid,
            **self.skipped.as_metadata("skipped"),
        }


def _scope(
    edges: sa.Table, shards: Sequence[reading.Shard], edge_ids: Sequence[int] | None
) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = [edges.c.deleted_at.is_(None)]
    clauses.append(reading.shards_clause(edges.c.source_id, shards))
    if edge_ids is not None:
        clauses.append(edges.c.id.in_(sorted(set(edge_ids))))
    return clauses


def classify_edges(
    engine: Engine, shards: Sequence[reading.Shard], edge_ids: Sequence[int] | None = None
) -> EdgeClassification:
    """Count live edges in scope by outcome, in SQL, without loading them all."""
    edges = reading.edges_table()
    scope = _scope(edges, shards, edge_ids)
    result = EdgeClassification()
    with engine.connect() as conn:
        unknown = (
            sa.select(edges.c.id)
            .where(*scope, sa.not_(sa.or_(*(reading.relation_clause(edges, r) for r in RELATIONS))))
            .order_by(edges.c.id)
        )
        for (edge_id,) in conn.execute(unknown):
            result.skipped.add(UNKNOWN_RELATION, edge_id)
        for rel in RELATIONS:
            src, tgt = entity(rel.source), entity(rel.target)
            s, t = reading.table_for(src).alias("s"), reading.table_for(tgt).alias("t")
            reason = sa.case(
                (s.c.id.is_(None), MISSING_SOURCE),
                (s.c[src.soft_delete_column].is_not(None), DELETED_SOURCE),
                (t.c.id.is_(None), MISSING_TARGET),
                (t.c[tgt.soft_delete_column].is_not(None), DELETED_TARGET),
                else_=OK,
            ).label("reason")
            joined = edges.outerjoin(s, s.c.id == edges.c.source_id).outerjoin(t, t.c.id == edges.c.target_id)
            base = (
                sa.select(edges.c.id, reason)
                .select_from(joined)
                .where(*scope, reading.relation_clause(edges, rel))
                .subquery()
            )
            counts = sa.select(base.c.reason, sa.func.count()).group_by(base.c.reason)
            for name, n in conn.execute(counts):
                if name == OK:
                    result.valid += n
                else:
                    result.skipped.add(name, None, n)
            rank = sa.func.row_number().over(partition_by=base.c.reason, order_by=base.c.id).label("rank")
            ranked = sa.select(base.c.id, base.c.reason, rank).where(base.c.reason != OK).subquery()
            bad = (
                sa.select(ranked.c.id, ranked.c.reason)
                .where(ranked.c.rank <= MAX_SAMPLE)
                .order_by(ranked.c.id)
            )
            for edge_id, name in conn.execute(bad):
                add_sample(result.skipped.samples.setdefault(name, []), [edge_id])
    result.edges_read = result.valid + sum(result.skipped.counts.values())
    return result


def window_edges(engine: Engine, window: EdgeWindow) -> list[tuple[int, str, int, str]]:
    """The window's edge rows, soft-deleted ones included (their sources need updating too)."""
    edges = reading.edges_table()
    q = (
        sa.select(edges.c.id, edges.c.source_table, edges.c.source_id, edges.c.relation)
        .order_by(edges.c.id)
        .offset(window.offset)
        .limit(window.batch_size)
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def touched_sources(
    rows: Sequence[tuple[int, str, int, str]], shards: Sequence[reading.Shard]
) -> dict[str, set[int]]:
    """``{collection: source ids}`` whose reference lists a window of edges can change."""
    out: dict[str, set[int]] = {}
    for _, source_table, source_id, relation in rows:
        if reading.in_shards(source_id, shards):
            for rel in relations_of_edge(source_table, relation):
                out.setdefault(rel.source, set()).add(source_id)
    return out
