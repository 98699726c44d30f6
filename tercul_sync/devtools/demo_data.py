"""A deterministic Tercul database of a chosen size, messy on purpose.

The same (rows, seed) always gives the same database, on any SQLAlchemy URL.
Besides ordinary rows it holds what the contract warns about: soft-deleted
rows, edges to missing or soft-deleted rows, relations Tercul does not use,
soft-deleted and duplicate edges, NULLs in every nullable column, text in
many scripts, and a few very long bodies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tercul_sync.engine import reading
from tercul_sync.engine.registry import EDGES_TABLE, ENTITIES, EntityType, Kind, entity

# Share of the requested rows that each table gets; edges come on top.
SHARES = {
    "Author": 0.12,
    "Work": 0.30,
    "Translation": 0.30,
    "Book": 0.12,
    "Publisher": 0.04,
    "Tag": 0.06,
    "Category": 0.06,
}
SOFT_DELETED = 0.03
NULL_RATE = 0.15
LONG_BODY_BYTES = 300_000
# Dangling edges name ids just past each table's last row: rows that were created and then removed
# outright. Their ids are used up (on PostgreSQL the sequence is moved past them), as in Tercul,
# where a row gets its id from a sequence that never hands it out again.
REMOVED_IDS = 1000
BASE_TIME = datetime(2020, 1, 1, tzinfo=UTC)

WORDS = [
    "night",
    "river",
    "war",
    "peace",
    "love",
    "winter",
    "garden",
    "letter",
    "city",
    "sea",
    "mountain",
    "silence",
    "memory",
    "bread",
    "fire",
    "Ночь",
    "мир",
    "война",
    "любовь",
    "зима",
    "夜",
    "河",
    "戦争",
    "平和",
    "愛",
    "冬",
    "ليل",
    "نهر",
    "حرب",
    "سلام",
    "حب",
    "شتاء",
    "ראשית",
    "אור",
    "naïve",
    "café",
    "Ælfred",
    "Øresund",
    "ẞtraße",
    "🌙",
    "📚",
    "✍️",
    "école",
    "ﷺ",
    "𝔊𝔬𝔱𝔥𝔦𝔠",  # noqa: RUF001 (look-alike letters on purpose)
]
LANGS = ["en", "ru", "ja", "ar", "he", "fr", "de", "es", "zh-Hans", "ka"]
COUNTRIES = ["GB", "RU", "JP", "EG", "IL", "FR", "DE", "ES", "CN", "GE"]


@dataclass(frozen=True)
class DemoSize:
    rows: int

    def count(self, collection: str) -> int:
        return max(3, int(self.rows * SHARES[collection]))


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _value(rng: random.Random, kind: Kind, name: str, row_id: int, length: int | None) -> Any:
    if kind in (Kind.TEXT,):
        return _text(rng, rng.randint(1, 12))
    if kind is Kind.VARCHAR:
        return rng.choice(LANGS)[: length or 8]
    if kind is Kind.CHAR:
        return rng.choice(COUNTRIES)
    if kind in (Kind.INT, Kind.BIGINT):
        return rng.randint(-500, 2024)
    if kind is Kind.BOOL:
        return rng.random() < 0.5
    if kind is Kind.TIMESTAMP:
        return BASE_TIME + timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999))
    raise ValueError(f"no demo value for {kind} ({name})")


def _row(rng: random.Random, e: EntityType, row_id: int, counts: dict[str, int]) -> dict[str, Any]:
    created = BASE_TIME + timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999))
    row: dict[str, Any] = {
        "id": row_id,
        "created_at": created,
        "updated_at": created + timedelta(seconds=rng.randint(0, 10**6)),
        "deleted_at": created + timedelta(days=1) if rng.random() < SOFT_DELETED else None,
    }
    for c in e.columns:
        if c.nullable and rng.random() < NULL_RATE:
            row[c.name] = None
        elif c.unique:
            row[c.name] = f"{c.name}-{row_id}" if c.kind is Kind.TEXT else f"978-{row_id:013d}"[: c.length]
        else:
            row[c.name] = _value(rng, c.kind, c.name, row_id, c.length)
    if e.collection == "Work" and row.get("body") is not None:
        long_body = row_id % 997 == 1  # a few works carry a very long full text
        row["body"] = _text(rng, LONG_BODY_BYTES // 6 if long_body else rng.randint(20, 200))
    if e.collection == "Translation":
        row["status"] = rng.choice(["draft", "published", None])
        row["work_id"] = rng.randint(1, counts["Work"])
    if e.collection == "Category":
        row["parent_id"] = rng.randint(1, row_id - 1) if row_id > 1 and rng.random() < 0.7 else None
    return row


# (source collection, relation, target collection, edges per source row: low, high)
EDGE_PLAN = (
    ("Work", "authors", "Author", 1, 2),
    ("Work", "tags", "Tag", 0, 3),
    ("Work", "categories", "Category", 0, 2),
    ("Translation", "translation_of", "Work", 1, 1),
    ("Translation", "translators", "Author", 0, 2),
    ("Book", "contains", "Work", 1, 3),
    ("Book", "publisher", "Publisher", 1, 1),
    ("Category", "parent", "Category", 0, 1),
)


def _edges(rng: random.Random, counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    edge_id = 0

    def edge(src: str, sid: int, rel: str, tgt: str, tid: int) -> dict[str, Any]:
        nonlocal edge_id
        edge_id += 1
        created = BASE_TIME + timedelta(seconds=rng.randint(0, 10**8))
        return {
            "id": edge_id,
            "created_at": created,
            "updated_at": created,
            "deleted_at": created if rng.random() < SOFT_DELETED else None,
            "source_table": src,
            "source_id": sid,
            "target_table": tgt,
            "target_id": tid,
            "relation": rel,
        }

    for src, rel, tgt, low, high in EDGE_PLAN:
        s, t = entity(src), entity(tgt)
        for sid in range(1, counts[src] + 1):
            for _ in range(rng.randint(low, high)):
                tid = rng.randint(1, counts[tgt])
                roll = rng.random()
                if roll < 0.02:
                    tid = counts[tgt] + rng.randint(1, REMOVED_IDS)  # dangling: the row was removed
                yield edge(s.table, sid, rel, t.table, tid)
                if roll > 0.99:
                    yield edge(s.table, sid, rel, t.table, tid)  # the same relationship twice
    # Relations Tercul does not use, and an edge whose source row does not exist.
    for _ in range(max(3, counts["Work"] // 50)):
        yield edge(
            "works", rng.randint(1, counts["Work"]), "inspired_by", "works", rng.randint(1, counts["Work"])
        )
        yield edge(
            "books", rng.randint(1, counts["Book"]), "authors", "authors", rng.randint(1, counts["Author"])
        )
    yield edge("works", counts["Work"] + 5000, "authors", "authors", 1)


def generate(
    engine: Engine, rows: int, seed: int = 7, reset: bool = True, chunk_rows: int = 2000
) -> dict[str, int]:
    """Create the tables and fill them; returns the number of rows written per table."""
    rng = random.Random(seed)
    md = reading.METADATA
    if reset:
        md.drop_all(engine)
    md.create_all(engine)
    size = DemoSize(rows)
    counts = {e.collection: size.count(e.collection) for e in ENTITIES}
    written: dict[str, int] = {}
    with engine.begin() as conn:
        for e in ENTITIES:
            table = reading.table_for(e)
            batch: list[dict[str, Any]] = []
            for row_id in range(1, counts[e.collection] + 1):
                batch.append(_row(rng, e, row_id, counts))
                if len(batch) >= chunk_rows:
                    conn.execute(table.insert(), batch)
                    batch = []
            if batch:
                conn.execute(table.insert(), batch)
            written[e.table] = counts[e.collection]
        edges = reading.edges_table()
        batch, n = [], 0
        for row in _edges(rng, counts):
            batch.append(row)
            n += 1
            if len(batch) >= chunk_rows:
                conn.execute(edges.insert(), batch)
                batch = []
        if batch:
            conn.execute(edges.insert(), batch)
        written[EDGES_TABLE] = n
        if engine.dialect.name == "postgresql":  # explicit ids: move sequences past them
            for name in written:
                removed = 0 if name == EDGES_TABLE else REMOVED_IDS  # and past the removed rows' ids
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}) + {removed})"
                    )
                )
    return written
