"""A share of changes in every table of a Tercul database, for the incremental run of bench_peers.py.

In each entity table, ``share`` of the live rows (at least 4) are picked at
even steps through the id space and split among: updates (a text column
gains a suffix, ``updated_at`` moves), soft deletes (``deleted_at`` set and
``updated_at`` left alone, as GORM does), hard deletes (``DELETE``) and
inserts (copies of the picked rows under new ids, unique columns made
unique). In ``edges`` the same share is split among soft deletes, hard
deletes and inserts of new edges between live rows. New rows take their ids
from the table's sequence on PostgreSQL, as Tercul's do, so they never take an
id that a dangling edge names (``demo_data.REMOVED_IDS``).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tercul_sync.engine import reading
from tercul_sync.engine.registry import ENTITIES, EntityType, Kind

KINDS = ("update", "soft_delete", "hard_delete", "insert")


def _update_column(e: EntityType) -> str:
    return next(c.name for c in e.columns if c.kind is Kind.TEXT and not c.unique)


def _unique_value(column: Any, value: Any, new_id: int) -> Any:
    if isinstance(value, str) and (column.type.length is None or column.type.length > len(value) + 12):
        return f"{value} #{new_id}"
    return None


def _new_ids(conn: sa.Connection, t: sa.Table, n: int) -> list[int]:
    """``n`` ids for new rows of ``t``: from its sequence on PostgreSQL, else after the largest."""
    if conn.dialect.name == "postgresql":
        q = sa.text(f"SELECT nextval(pg_get_serial_sequence('{t.name}', 'id')) FROM generate_series(1, :n)")
        return [int(i) for i in conn.execute(q, {"n": n}).scalars()]
    start = int(conn.execute(sa.select(sa.func.max(t.c.id))).scalar_one() or 0) + 1
    return list(range(start, start + n))


def change_entities(conn: sa.Connection, e: EntityType, share: float, now: datetime) -> Counter[str]:
    t = reading.table_for(e)
    soft = t.c[e.soft_delete_column]
    ids = list(conn.execute(sa.select(t.c.id).where(soft.is_(None)).order_by(t.c.id)).scalars())
    n = max(len(KINDS), round(len(ids) * share))
    picked = ids[:: max(1, len(ids) // n)][:n]
    by_kind = {k: picked[i :: len(KINDS)] for i, k in enumerate(KINDS)}
    done: Counter[str] = Counter()
    col = t.c[_update_column(e)]
    done["update"] = conn.execute(
        t.update()
        .where(t.c.id.in_(by_kind["update"]))
        .values({col: sa.func.coalesce(col, "") + " *", t.c.updated_at: now})
    ).rowcount
    done["soft_delete"] = conn.execute(
        t.update().where(t.c.id.in_(by_kind["soft_delete"])).values({soft: now})
    ).rowcount
    done["hard_delete"] = conn.execute(t.delete().where(t.c.id.in_(by_kind["hard_delete"]))).rowcount
    originals = list(conn.execute(sa.select(t).where(t.c.id.in_(by_kind["insert"]))).mappings())
    copies = []
    for row, new_id in zip(originals, _new_ids(conn, t, len(originals)), strict=True):
        new = dict(row)
        new.update({"id": new_id, "created_at": now, "updated_at": now, e.soft_delete_column: None})
        for c in t.columns:
            if c.unique and new.get(c.name) is not None:
                new[c.name] = _unique_value(c, new[c.name], new_id)
        copies.append(new)
    if copies:
        conn.execute(t.insert(), copies)
    done["insert"] = len(copies)
    return done


def change_edges(conn: sa.Connection, share: float, now: datetime, rng: random.Random) -> Counter[str]:
    t = reading.edges_table()
    ids = list(conn.execute(sa.select(t.c.id).where(t.c.deleted_at.is_(None)).order_by(t.c.id)).scalars())
    n = max(3, round(len(ids) * share))
    picked = ids[:: max(1, len(ids) // n)][:n]
    soft, hard, copy = picked[0::3], picked[1::3], picked[2::3]
    done: Counter[str] = Counter()
    done["soft_delete"] = conn.execute(t.update().where(t.c.id.in_(soft)).values(deleted_at=now)).rowcount
    done["hard_delete"] = conn.execute(t.delete().where(t.c.id.in_(hard))).rowcount
    live_ids = {
        e.table: list(
            conn.execute(
                sa.select(reading.table_for(e).c.id).where(
                    reading.table_for(e).c[e.soft_delete_column].is_(None)
                )
            ).scalars()
        )
        for e in ENTITIES
    }
    originals = list(conn.execute(sa.select(t).where(t.c.id.in_(copy))).mappings())
    new_edges = []
    for row, new_id in zip(originals, _new_ids(conn, t, len(originals)), strict=True):
        targets = live_ids.get(row["target_table"]) or [row["target_id"]]
        new = dict(row)
        new.update(
            {
                "id": new_id,
                "created_at": now,
                "updated_at": now,
                "deleted_at": None,
                "target_id": rng.choice(targets),
            }
        )
        new_edges.append(new)
    if new_edges:
        conn.execute(t.insert(), new_edges)
    done["insert"] = len(new_edges)
    return done


def apply_changes(db: sa.Engine, share: float, seed: int = 1) -> dict[str, dict[str, int]]:
    """Change ``share`` of every table, in one transaction; returns ``{table: {kind: rows}}``."""
    now = datetime.now(UTC)
    rng = random.Random(seed)
    out: dict[str, dict[str, int]] = {}
    with db.begin() as conn:
        for e in ENTITIES:
            out[e.table] = dict(change_entities(conn, e, share, now))
        out["edges"] = dict(change_edges(conn, share, now, rng))
    return out
