"""Range digests: whether a range of ids needs reading at all, from one aggregate on each side.

Every entity object carries two numbers the database can compute on its own
for the object's desired state, each modulo ``MODULUS``:

- ``sync_digest``: a digest of the row's columns plus a fingerprint of what
  else shapes the object (the registry's columns, the vectorizer). The
  database computes the row's part in the same query that reads the row
  (``row_digest``), so Python never reproduces its text forms.
- ``sync_ref_digest``: the sum of one digest per reference the object was
  written with (a live edge to a live row whose object existed). A reference
  deferred because its target had no object yet leaves it short, and the
  range is read again once the target exists.

A full run then asks, for a whole id range, the database for the count and the
sum of those digests (a ``GROUP BY`` over every bucket of ``BUCKET`` ids, rows
and references apart) and Weaviate for the count and the sum of the stored ones
(a filtered aggregate). Equal: nothing in the range changed, and it is not
read. A re-run with nothing changed costs a few queries per collection instead
of reading every row. Different: the range is halved (Weaviate side; the
database's buckets are summed in memory) down to single buckets, and only
those are read, whole, through the usual path (content hashes decide what is
written; objects whose row is gone are deleted). The edges step compares the
references' sums alone.

The blind spot: a range where changes cancel out in both count and sum, about
one chance in ``MODULUS`` (2^31) per changed range; the nightly parity job (a walk) and
forced runs read everything. Sums stay exact in Weaviate's aggregates (doubles)
because no measured range holds more than ``MAX_BUCKETS`` buckets: 2^20 ids,
each adding less than 2^32.

PostgreSQL computes the digests with ``md5``; SQLite (the demo) with the same
function registered on each connection. Other databases, ``column`` vectors
(read from columns outside the registry) and forced runs skip the check.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from tercul_sync.engine.registry import EntityType, Kind
from tercul_sync.engine.settings import Settings

DIGEST_PROPERTY = "sync_digest"  # the row's part (and the fingerprint's)
REF_DIGEST_PROPERTY = "sync_ref_digest"  # the references' part
ROW_DIGEST_COLUMN = "sync_row_digest"  # the row's part, as the reading queries label it
MODULUS = 2**31
BUCKET = 4_096  # ids per range read when its digests differ
# At most this many buckets per measured range: 2^20 ids, whose two digests sum below 2^53.
MAX_BUCKETS = 2**20 // BUCKET
DIGEST_VERSION = "2"  # bump when what the digest covers changes: every object is then read again
# Bump when what a parent's first passage carries changes: every parent is then cut again once and
# its first passage rewritten (3: the passage count, ``sync_passages``).
PASSAGE_MARK_VERSION = "3"
_NULL = "\\N"
_SEPARATOR = "\x1f"
DIALECTS = ("postgresql", "sqlite")

Sums = tuple[int, int]  # (objects, sum of their digests)


def text_digest(text: str | bytes) -> int:
    """The first 32 bits of ``md5(text)`` modulo ``MODULUS``: what ``Md5Digest`` computes in SQL.

    Never raises: SQLite may hand over text that is not valid Unicode (a lone surrogate, which
    ``objects.row_problem`` reports), and a digest that failed would fail the whole page's read."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return int(hashlib.md5(raw).hexdigest()[:8], 16) % MODULUS


def edge_digest(relation: str, target_id: int) -> int:
    """One reference's part of its source's digest."""
    return text_digest(f"{relation}:{target_id}")


def fingerprint(e: EntityType, settings: Settings) -> int:
    """What shapes ``e``'s objects besides its rows: a change re-reads every row once."""
    vectors = (
        (settings.vectorizer, settings.embedding_model, settings.embed_max_chars, settings.embedder)
        if e.vectors
        else None
    )
    columns = [(c.name, c.kind.value) for c in e.property_columns]
    return text_digest(repr((DIGEST_VERSION, e.collection, columns, vectors)))


def passage_fingerprint(e: EntityType, settings: Settings, target: str) -> int:
    """What shapes the passages of ``e``'s texts besides the parent row: the splitter's specs, the
    collection their parent reference names (a rebuild's version), the passages' vectorizer."""
    specs = [(p.property, p.language, p.copied, p.max_chars, p.overlap_chars) for p in e.passages]
    vectors = (settings.vectorizer, settings.embedding_model, settings.embedder)
    return text_digest(
        repr((DIGEST_VERSION, "passages", PASSAGE_MARK_VERSION, e.collection, specs, target, vectors))
    )


def object_digest(row_digest: int, fingerprint_value: int) -> int:
    """An object's ``sync_digest``: its row's digest and the fingerprint."""
    return (row_digest + fingerprint_value) % MODULUS


def stored_digest(row: Mapping[Any, Any], fingerprint_value: int) -> int | None:
    """``object_digest`` of a row read with its ``ROW_DIGEST_COLUMN``; None when the read had none."""
    row_digest = row.get(ROW_DIGEST_COLUMN)
    return None if row_digest is None else object_digest(int(row_digest), fingerprint_value)


def references_digest(references: Sequence[int]) -> int:
    """An object's ``sync_ref_digest``: the digests of the references it carries."""
    return sum(references) % MODULUS


def applies(engine: Engine, settings: Settings, force: bool) -> bool:
    """Whether a full run may skip ranges by digest (see the module's docstring)."""
    return (
        settings.range_digests
        and engine.dialect.name in DIALECTS
        and not force
        and settings.vectorizer != "column"
    )


# --- SQL ------------------------------------------------------------------------------------


def _sql_function(
    name: str, result: sa.types.TypeEngine[Any], sql: dict[str, str]
) -> type[FunctionElement[Any]]:
    """A one-argument SQL function written per dialect (``sql``: dialect name, or ``""`` for any
    other, to a template of ``{arg}``)."""
    cls = type(name, (FunctionElement,), {"type": result, "inherit_cache": True, "name": name})

    @compiles(cls)
    def _compile(element: FunctionElement[Any], compiler: Any, **kw: Any) -> str:
        template = sql.get(compiler.dialect.name, sql[""])
        return template.format(arg=compiler.process(element.clauses, **kw))

    return cls


# ``text_digest`` of a text expression, in SQL. Another database gets NULL: every range reads as
# changed, and ``applies`` skips the check there anyway.
Md5Digest = _sql_function(
    "tercul_digest",
    sa.BigInteger(),
    {
        "postgresql": f"mod(('x' || substr(md5({{arg}}), 1, 8))::bit(32)::bigint, {MODULUS})",
        "sqlite": "tercul_digest(CAST({arg} AS BLOB))",  # bytes: valid UTF-8 or not
        "": "NULL",
    },
)
# A timestamp as text that does not depend on the session's time zone or date style.
_EpochText = _sql_function(
    "tercul_epoch_text",
    sa.Text(),
    {"postgresql": "CAST(EXTRACT(EPOCH FROM {arg}) AS TEXT)", "": "CAST({arg} AS TEXT)"},
)


@sa.event.listens_for(Engine, "connect")
def _register_sqlite_digest(dbapi_connection: Any, _record: Any) -> None:
    """SQLite has no md5: the same digest as a function of each connection."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.create_function("tercul_digest", 1, _sqlite_digest, deterministic=True)


def _sqlite_digest(value: str | bytes | None) -> int | None:
    return None if value is None else text_digest(value)


def _as_text(column: sa.ColumnElement[Any], kind: Kind) -> sa.ColumnElement[str]:
    text = _EpochText(column) if kind is Kind.TIMESTAMP else sa.cast(column, sa.Text)
    return sa.func.coalesce(text, _NULL)


def row_digest(e: EntityType, table: sa.Table) -> sa.ColumnElement[int]:
    """The row's part of its object's digest, labelled ``ROW_DIGEST_COLUMN``: over the id and
    every column the object holds."""
    parts: list[sa.ColumnElement[str]] = [sa.cast(table.c.id, sa.Text)]
    parts += [_as_text(table.c[c.name], c.kind) for c in e.property_columns]
    text = parts[0]
    for part in parts[1:]:
        text = text.concat(_SEPARATOR).concat(part)
    return Md5Digest(text).label(ROW_DIGEST_COLUMN)


def object_digest_sql(e: EntityType, table: sa.Table, fingerprint_value: int) -> sa.ColumnElement[int]:
    """``object_digest`` in SQL: the ``sync_digest`` the row's object should hold."""
    row: sa.ColumnElement[int] = row_digest(e, table).element
    return (row + fingerprint_value) % MODULUS


# --- the search -----------------------------------------------------------------------------


def differing_buckets(
    buckets: int, database: Callable[[int, int], Sums], weaviate: Callable[[int, int], Sums], max_share: float
) -> list[int] | None:
    """The buckets in ``[0, buckets)`` whose measures differ, halving ranges that differ down to
    single buckets; None as soon as they are sure to be more than ``max_share`` of all buckets
    (reading everything is then cheaper than searching). No range measured is wider than
    ``MAX_BUCKETS``."""
    budget = max_share * buckets
    tops = [(a, min(a + MAX_BUCKETS, buckets)) for a in range(0, buckets, MAX_BUCKETS)]
    differing = [(a, b) for a, b in tops if database(a, b) != weaviate(a, b)]
    found: list[int] = []
    while differing:
        found += [a for a, b in differing if b - a == 1]
        wider = [(a, b) for a, b in differing if b - a > 1]
        if len(found) + len(wider) > budget and buckets > 1:
            return None
        halves = [half for a, b in wider for half in ((a, (a + b) // 2), ((a + b) // 2, b))]
        differing = [(a, b) for a, b in halves if database(a, b) != weaviate(a, b)]
    return sorted(found)


def prefix_measure(sums: dict[int, Sums], buckets: int) -> Callable[[int, int], Sums]:
    """The database's measure of buckets ``[a, b)``, from per-bucket sums, in constant time."""
    counts, digests = [0], [0]
    for b in range(buckets):
        n, s = sums.get(b, (0, 0))
        counts.append(counts[-1] + n)
        digests.append(digests[-1] + s)
    return lambda a, b: (counts[b] - counts[a], digests[b] - digests[a])


def merge_buckets(found: Sequence[int], low: int) -> list[tuple[int, int]]:
    """Differing buckets as id ranges ``[start, end)``, neighbours merged."""
    ranges: list[tuple[int, int]] = []
    for b in found:
        start, end = low + b * BUCKET, low + (b + 1) * BUCKET
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def covering_span(*bounds: tuple[int, int] | None) -> tuple[int, int] | None:
    """``[low, high)`` covering every ``(smallest, largest)`` id given; None when none is."""
    known = [b for b in bounds if b]
    return (min(b[0] for b in known), max(b[1] for b in known) + 1) if known else None


def differing_ranges(
    span: tuple[int, int],
    database: Callable[[int], dict[int, Sums]],
    weaviate: Callable[[int, int], Sums],
    max_share: float,
) -> tuple[list[tuple[int, int]], int] | None:
    """The ranges of ids in ``span`` whose digest sums differ (``database(low)``: every bucket's sums
    from ``low``; ``weaviate(a, b)``: the sums over ids ``[a, b)``), and the rows that matched; None
    when the differences are everywhere (more than ``max_share`` of the buckets)."""
    low, high = span
    buckets = -(-(high - low) // BUCKET)
    sums = database(low)
    found = differing_buckets(
        buckets,
        database=prefix_measure(sums, buckets),
        weaviate=lambda a, b: weaviate(low + a * BUCKET, low + b * BUCKET),
        max_share=max_share,
    )
    if found is None:
        return None
    read = sum(sums.get(b, (0, 0))[0] for b in found)
    return merge_buckets(found, low), sum(n for n, _ in sums.values()) - read
