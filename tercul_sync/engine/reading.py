"""Reading Tercul's relational database with SQLAlchemy Core.

SQLAlchemy is here so that one reader serves PostgreSQL in production and
SQLite for the demo, with bound parameters and no hand-written dialect code.
Tables are built from the registry, not reflected, so a column the registry
names is read with the registry's meaning.

Rows are read by keyset pagination (``id > last ORDER BY id LIMIT n``):
every page costs the same however deep into the table it is, unlike OFFSET.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, RowMapping

from tercul_sync.engine import digests
from tercul_sync.engine.id_tables import SortedIds
from tercul_sync.engine.registry import (
    EDGES_TABLE,
    ENTITIES,
    Column,
    EntityType,
    Kind,
    Relation,
    entity,
    passage_parents,
    relations_from,
)

STREAM_ROWS = 10_000  # rows a streamed query (a server-side cursor) fetches at a time

_SQL_TYPES: dict[Kind, Callable[[Column], sa.types.TypeEngine[Any]]] = {
    Kind.TEXT: lambda c: sa.Text(),
    Kind.VARCHAR: lambda c: sa.String(c.length),
    Kind.CHAR: lambda c: sa.CHAR(c.length),
    Kind.INT: lambda c: sa.Integer(),
    Kind.BIGINT: lambda c: sa.BigInteger(),
    Kind.BOOL: lambda c: sa.Boolean(),
    Kind.TIMESTAMP: lambda c: sa.DateTime(timezone=True),
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT ids become INTEGER there.
_ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _gorm_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    ]


def build_metadata() -> sa.MetaData:
    """SQLAlchemy tables for every registry entity plus ``edges``, as GORM lays them out."""
    md = sa.MetaData()
    for e in ENTITIES:
        cols = [
            sa.Column(c.name, _SQL_TYPES[c.kind](c), nullable=c.nullable, unique=c.unique) for c in e.columns
        ]
        t = sa.Table(e.table, md, *_gorm_columns(), *cols)
        sa.Index(f"idx_{e.table}_updated_at", t.c.updated_at, t.c.id)
    edges = sa.Table(
        EDGES_TABLE,
        md,
        *_gorm_columns(),
        sa.Column("source_table", sa.Text, nullable=False),
        sa.Column("source_id", sa.BigInteger, nullable=False),
        sa.Column("target_table", sa.Text, nullable=False),
        sa.Column("target_id", sa.BigInteger, nullable=False),
        sa.Column("relation", sa.Text, nullable=False),
    )
    sa.Index("idx_edges_source", edges.c.source_table, edges.c.source_id)
    sa.Index("idx_edges_target", edges.c.target_table, edges.c.target_id)
    sa.Index(f"idx_{EDGES_TABLE}_updated_at", edges.c.updated_at, edges.c.id)
    return md


METADATA = build_metadata()


def table_for(e: EntityType) -> sa.Table:
    return METADATA.tables[e.table]


def edges_table() -> sa.Table:
    return METADATA.tables[EDGES_TABLE]


@dataclass(frozen=True)
class Shard:
    """A stable slice of a table's id space: rows with ``id % count == index``.

    A shard always holds the same rows however the table grows, so a
    partition that failed can be re-run alone and means what it meant.
    """

    index: int
    count: int

    def contains(self, row_id: int) -> bool:
        return self.count == 1 or row_id % self.count == self.index

    def clause(self, id_column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The same membership in SQL."""
        if self.count == 1:
            return sa.true()
        # The modulus as a literal, so that the WHERE is the expression `tercul-sync index` builds
        # (`id % n`) and PostgreSQL can use that index whatever the driver binds.
        return (id_column % sa.literal_column(str(int(self.count)))) == self.index


def in_shards(row_id: int, shards: Sequence[Shard]) -> bool:
    """Whether ``row_id`` belongs to any of ``shards`` (no shards: no restriction)."""
    return not shards or any(s.contains(row_id) for s in shards)


def covers_every_id(shards: Sequence[Shard]) -> bool:
    """Whether ``shards`` are every shard of a table (every id is in one of them)."""
    return bool(shards) and len({(s.index, s.count) for s in shards}) == shards[0].count


def shards_clause(id_column: sa.ColumnElement[Any], shards: Sequence[Shard]) -> sa.ColumnElement[bool]:
    """``in_shards`` in SQL (no condition when the shards cover every id)."""
    if not shards or covers_every_id(shards):
        return sa.true()
    return sa.or_(*(s.clause(id_column) for s in shards))


def read_connection(engine: Engine) -> sa.Connection:
    """A connection for reads that need no transaction of their own: each statement commits alone.

    A stream of pages holds one such connection, instead of checking one out per page: at every
    checkout the pool pings the server, and a transaction adds a BEGIN and a ROLLBACK, each a round
    trip that a step's other threads (holding the GIL) make slow. Every page is still read in a
    snapshot of its own, as under READ COMMITTED.
    """
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def row_columns(e: EntityType, extra: Sequence[str] = ()) -> list[sa.ColumnElement[Any]]:
    """What every read of rows to write selects: the id, the ``extra`` columns, the object's
    columns, and the row's part of its digest (``digests.row_digest``)."""
    t = table_for(e)
    columns = [t.c[c] for c in extra] + [t.c[c.name] for c in e.property_columns]
    return [t.c.id, *columns, digests.row_digest(e, t)]


def select_live_page(
    e: EntityType,
    shards: Sequence[Shard],
    after_id: int,
    limit: int,
    below: int | None = None,
    columns: Sequence[str] | None = None,
) -> sa.Select[Any]:
    """One keyset page of live rows of ``shards`` (with ids under ``below``, if given), in id order:
    ``row_columns``, or the id and ``columns`` alone."""
    t = table_for(e)
    selected = row_columns(e) if columns is None else [t.c.id, *(t.c[c] for c in columns)]
    q = (
        sa.select(*selected)
        .where(t.c[e.soft_delete_column].is_(None), t.c.id > after_id, shards_clause(t.c.id, shards))
        .order_by(t.c.id)
        .limit(limit)
    )
    return q if below is None else q.where(t.c.id < below)


def iter_live_pages(
    engine: Engine,
    e: EntityType,
    shards: Sequence[Shard],
    page_size: int,
    ranges: Sequence[tuple[int, int]] | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[list[RowMapping]]:
    """Stream the live rows of ``shards`` a page at a time, in id order; memory is bounded by
    ``page_size``. Several shards are one stream (every shard: one scan of the table, no modulus).
    With ``ranges``, only the ids in those ``[low, high)`` ranges (in order, not overlapping); with
    ``columns``, only the id and those (``select_live_page``)."""
    if page_size < 1:
        raise ValueError(f"page size must be at least 1, got {page_size}")
    with read_connection(engine) as conn:
        for low, high in [(None, None)] if ranges is None else ranges:
            after = -1 << 62 if low is None else low - 1
            while True:
                q = select_live_page(e, shards, after, page_size, high, columns)
                page = list(conn.execute(q).mappings())
                if page:
                    yield page
                if len(page) < page_size:
                    break
                after = page[-1]["id"]


def fetch_live_rows(engine: Engine, e: EntityType, ids: Sequence[int]) -> list[RowMapping]:
    """Live rows of ``e`` among ``ids`` (for syncing chosen sources, e.g. an edge window)."""
    if not ids:
        return []
    t = table_for(e)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*row_columns(e))
            .where(t.c.id.in_(sorted(set(ids))), t.c[e.soft_delete_column].is_(None))
            .order_by(t.c.id)
        )
        return list(rows.mappings())


def live_ids_among(engine: Engine, e: EntityType, ids: Sequence[int]) -> set[int]:
    """The ids among ``ids`` whose row exists and is not soft-deleted."""
    t = table_for(e)
    ordered, out = sorted(set(ids)), set[int]()
    with engine.connect() as conn:
        for start in range(0, len(ordered), 5_000):
            q = sa.select(t.c.id).where(
                t.c.id.in_(ordered[start : start + 5_000]), t.c[e.soft_delete_column].is_(None)
            )
            out.update(conn.execute(q).scalars())
    return out


def require_columns(engine: Engine, e: EntityType, columns: Sequence[str]) -> None:
    """Raise ``MissingColumnError``, naming the table and column, when a column is missing."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(e.table)}
    missing = [c for c in columns if c not in present]
    if missing:
        raise MissingColumnError(
            f"table {e.table} has no column {', '.join(missing)} (TERCUL_SYNC_VECTOR_COLUMN)"
        )


def fetch_vector_columns(
    engine: Engine, e: EntityType, ids: Sequence[int], columns: Sequence[str]
) -> dict[int, dict[str, Any]]:
    """``{id: {column: raw value}}`` of vector columns, which are not in the registry (``column`` mode)."""
    if not ids:
        return {}
    t = sa.table(e.table, sa.column("id"), *(sa.column(c) for c in columns))
    q = sa.select(t.c.id, *(t.c[c] for c in columns)).where(t.c.id.in_(sorted(set(ids))))
    with engine.connect() as conn:
        return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in conn.execute(q)}


class MissingColumnError(RuntimeError):
    """A table lacks a column the settings or the registry need; the message names both."""


class SourceSchemaError(MissingColumnError):
    """Tercul's database does not match the registry: a table or column is missing, or of another type."""


class SourceAccessError(PermissionError):
    """The database role may not read a table the sync needs (a missing SELECT grant)."""


# The type family each registry column must have in the database, as words for errors.
_FAMILY_NAMES = {
    sa.String: "text",
    sa.Integer: "an integer",
    sa.Boolean: "a boolean",
    sa.DateTime: "a timestamp",
}


def _expected_columns(table: sa.Table) -> dict[str, type[sa.types.TypeEngine[Any]]]:
    """Each column of a registry table with the type family it must have in the database."""
    out: dict[str, type[sa.types.TypeEngine[Any]]] = {}
    for col in table.columns:
        family = next(f for f in (sa.DateTime, sa.Boolean, sa.Integer, sa.String) if isinstance(col.type, f))
        out[col.name] = family
    return out


def check_source(engine: Engine, tables: Sequence[str] | None = None) -> None:
    """Check, before anything is read or written, that each table matches the registry and may be read.

    Raises ``SourceSchemaError`` naming the table and column (missing, or of
    another type than the registry's) and ``SourceAccessError`` naming the
    table the role has no SELECT grant on. ``tables``: all registry tables
    and ``edges`` when None.
    """
    inspector = sa.inspect(engine)
    problems: list[str] = []
    for name in tables or list(METADATA.tables):
        t = METADATA.tables[name]
        try:
            reflected = {c["name"]: c["type"] for c in inspector.get_columns(name)}
        except sa.exc.NoSuchTableError:
            problems.append(f"table {name} does not exist")
            continue
        for column, family in _expected_columns(t).items():
            if column not in reflected:
                problems.append(
                    f"table {name} has no column {column} (the registry needs {_FAMILY_NAMES[family]})"
                )
            elif not isinstance(reflected[column], family):
                problems.append(
                    f"table {name}, column {column} is {reflected[column]} in the database, "
                    f"the registry needs {_FAMILY_NAMES[family]}"
                )
    if problems:
        raise SourceSchemaError("Tercul's database does not match the registry: " + "; ".join(problems))
    with engine.connect() as conn:
        for name in tables or list(METADATA.tables):
            t = METADATA.tables[name]
            try:
                conn.execute(sa.select(*t.columns).where(sa.false()))
            except sa.exc.DBAPIError as exc:
                if not _permission_denied(exc):
                    raise
                conn.rollback()
                user = conn.execute(sa.text("SELECT current_user")).scalar_one()
                raise SourceAccessError(
                    f"the database role {user} may not read table {name}: a SELECT grant is missing "
                    f"(GRANT SELECT ON {name} TO {user})"
                ) from None


def tables_read_by(step: str) -> list[str]:
    """The tables a step reads: an entity's table (and ``edges`` and its targets' tables when it has
    relations), every table for the edges step, the parents' tables for the passages step."""
    by_collection = {e.collection: e for e in ENTITIES}
    if step in by_collection:
        e = by_collection[step]
        targets = [entity(r.target).table for r in relations_from(e.collection)]
        return sorted({e.table, *targets, *([EDGES_TABLE] if targets else [])})
    if step == EDGES_TABLE:
        return list(METADATA.tables)
    return sorted({e.table for e in passage_parents()})


def _permission_denied(exc: sa.exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "pgcode", None)  # PostgreSQL's insufficient_privilege
    return code == "42501" or "permission denied" in str(exc.orig).lower()


def relation_clause(edges: sa.FromClause, rel: Relation) -> sa.ColumnElement[bool]:
    """The ``edges`` rows (the table, or a selection of its columns) that stand for ``rel``
    (whatever their endpoints' state)."""
    return sa.and_(
        edges.c.source_table == entity(rel.source).table,
        edges.c.relation == rel.name,
        edges.c.target_table == entity(rel.target).table,
    )


def live_edges_from(
    engine: Engine, rels: Sequence[Relation], source_ids: Sequence[int]
) -> dict[str, dict[int, list[tuple[int, int]]]]:
    """Live edges of ``rels`` (relations of one source type) starting at ``source_ids`` whose target
    row is live, in one query.

    Returns ``{relation name: {source_id: [(edge_id, target_id), ...]}}``, in (source, target, edge)
    order. Edges to missing or soft-deleted targets are left out here and counted by
    ``classify_edges``.

    It runs once per page of sources. The page's edges are read first, by the source index alone
    (a materialized CTE on PostgreSQL), and each target is then looked up by its key. Written as
    one join per relation, the planner scanned the edges' target index and whole target tables
    for every page, in parallel workers: a first sync of the 100k benchmark data cost PostgreSQL
    7.7 CPU-s that way, 3.3 CPU-s this way (``benchmarks/bench_commits.py``).
    """
    out: dict[str, dict[int, list[tuple[int, int]]]] = {r.name: {} for r in rels}
    if not source_ids or not rels:
        return out
    edges = edges_table()
    page = (
        sa.select(
            edges.c.id,
            edges.c.source_table,
            edges.c.source_id,
            edges.c.relation,
            edges.c.target_table,
            edges.c.target_id,
        )
        .where(
            edges.c.source_table == entity(rels[0].source).table,
            edges.c.source_id.in_(sorted(set(source_ids))),
            edges.c.deleted_at.is_(None),
        )
        .cte("page_edges")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    numbered: list[tuple[sa.ColumnElement[bool], int]] = []
    live: list[sa.ColumnElement[bool]] = []
    for i, rel in enumerate(rels):
        tgt = entity(rel.target)
        target = table_for(tgt)
        is_rel = relation_clause(page, rel)
        target_live = sa.exists().where(
            target.c.id == page.c.target_id, target.c[tgt.soft_delete_column].is_(None)
        )
        numbered.append((is_rel, i))
        live.append(sa.and_(is_rel, target_live))
    relation_number = sa.case(*numbered).label("rel")
    q = (
        sa.select(relation_number, page.c.id, page.c.source_id, page.c.target_id)
        .where(sa.or_(*live))
        .order_by(relation_number, page.c.source_id, page.c.target_id, page.c.id)
    )
    with read_connection(engine) as conn:
        for i, edge_id, source_id, target_id in conn.execute(q):
            out[rels[i].name].setdefault(source_id, []).append((edge_id, target_id))
    return out


def count_live(engine: Engine, e: EntityType) -> int:
    t = table_for(e)
    q = sa.select(sa.func.count()).select_from(t).where(t.c[e.soft_delete_column].is_(None))
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def live_ids_between(engine: Engine, e: EntityType, low: int, high: int) -> set[int]:
    """Live ids in ``[low, high)``."""
    t = table_for(e)
    q = sa.select(t.c.id).where(t.c[e.soft_delete_column].is_(None), t.c.id >= low, t.c.id < high)
    with engine.connect() as conn:
        return set(conn.execute(q).scalars())


def count_live_between(engine: Engine, e: EntityType, low: int, high: int) -> int:
    t = table_for(e)
    q = sa.select(sa.func.count()).where(t.c[e.soft_delete_column].is_(None), t.c.id >= low, t.c.id < high)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def id_bounds(engine: Engine, e: EntityType) -> tuple[int, int] | None:
    """The smallest and largest id in the table, deleted rows included; None when it is empty."""
    t = table_for(e)
    with engine.connect() as conn:
        low, high = conn.execute(sa.select(sa.func.min(t.c.id), sa.func.max(t.c.id))).one()
    return None if low is None else (int(low), int(high))


def has_text(e: EntityType, columns: Sequence[str]) -> sa.ColumnElement[bool]:
    """Rows with something besides spaces in any of ``columns`` (the parents that have passages)."""
    t = table_for(e)
    return sa.or_(*(sa.func.length(sa.func.trim(t.c[c])) > 0 for c in columns))


def count_live_with_text(engine: Engine, e: EntityType, columns: Sequence[str]) -> int:
    """Live rows of ``e`` with something besides whitespace in any of ``columns``."""
    t = table_for(e)
    q = (
        sa.select(sa.func.count())
        .select_from(t)
        .where(t.c[e.soft_delete_column].is_(None), has_text(e, columns))
    )
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def safe_url(url: str) -> str:
    """The database URL with any password masked, for logs and metadata."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class OutOfRange(str):
    """A timestamp the database holds but Python cannot (year 0 or 10000 once in UTC); the raw text.

    ``objects.row_problem`` reports the row with it, instead of the whole page failing to read.
    """


def _decode_sqlite_text(raw: bytes) -> str:
    """SQLite text as Python text. SQLite stores whatever bytes it was given: UTF-8-encoded lone
    surrogates come back as such (``surrogatepass``), other invalid bytes as escapes; either way the
    row is reported by ``objects.row_problem`` instead of the page failing to read."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "surrogateescape")


def _register_pg_timestamps(dbapi_connection: Any) -> None:
    """psycopg2 raises for a timestamptz outside Python's years 1-9999 once converted to the session's
    zone, failing the whole page; on this connection such a value reads as ``OutOfRange``."""
    import psycopg2.extensions as ext  # type: ignore[import-untyped]

    def caster(base: Any) -> Any:
        def cast(value: str | None, cursor: Any) -> Any:
            try:
                return base(value, cursor)
            except ValueError:
                return OutOfRange(value)

        return cast

    for base in (ext.PYDATETIMETZ, ext.PYDATETIME):
        oids = base.values
        ext.register_type(ext.new_type(oids, f"TERCUL_{base.name}", caster(base)), dbapi_connection)


def make_engine(url: str) -> Engine:
    """An engine that checks a pooled connection before use (steps can idle while Weaviate retries).

    Values that would fail a whole page come back so that their row can be reported: invalid UTF-8
    in SQLite text, PostgreSQL timestamps outside Python's range.
    """
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_text(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.text_factory = _decode_sqlite_text

    elif engine.dialect.driver == "psycopg2":

        @sa.event.listens_for(engine, "connect")
        def _pg_timestamps(dbapi_connection: Any, _record: Any) -> None:
            _register_pg_timestamps(dbapi_connection)

    return engine


def live_id_set(engine: Engine, e: EntityType, shards: Sequence[Shard]) -> SortedIds:
    """Every live id of ``e`` in ``shards`` (the orphan sweep's side of the comparison), compactly:
    held while every object of the collection is walked."""
    t = table_for(e)
    q = (
        sa.select(t.c.id)
        .where(t.c[e.soft_delete_column].is_(None), shards_clause(t.c.id, shards))
        .order_by(t.c.id)
    )
    with engine.connect().execution_options(stream_results=True, yield_per=STREAM_ROWS) as conn:
        return SortedIds(conn.execute(q).scalars())


def _reference_digests(e: EntityType, span: tuple[int, int] | None = None) -> sa.Subquery:
    """``(source_id, n, digest)``: the number and the sum of the digests of each source's references
    (its live edges to live rows, each relation and target once), as ``ObjectSyncer`` adds them to
    its objects; only of sources with ids in ``span`` (``[low, high)``) when given."""
    edges, parts = edges_table(), []
    within = [] if span is None else [edges.c.source_id >= span[0], edges.c.source_id < span[1]]
    for rel in relations_from(e.collection):
        tgt = entity(rel.target)
        target = table_for(tgt)
        parts.append(
            sa.select(edges.c.source_id, sa.literal(rel.name).label("relation"), edges.c.target_id)
            .join(target, target.c.id == edges.c.target_id)
            .where(
                edges.c.deleted_at.is_(None),
                relation_clause(edges, rel),
                target.c[tgt.soft_delete_column].is_(None),
                *within,
            )
        )
    # Each (source, relation, target) once: the reference lists are sets, and edges may repeat.
    pairs = (sa.union(*parts) if len(parts) > 1 else parts[0].distinct()).subquery()
    digest = digests.Md5Digest(pairs.c.relation.concat(":").concat(sa.cast(pairs.c.target_id, sa.Text)))
    return (
        sa.select(pairs.c.source_id, sa.func.count().label("n"), sa.func.sum(digest).label("digest"))
        .group_by(pairs.c.source_id)
        .subquery()
    )


def reference_sums(
    engine: Engine, e: EntityType, span: tuple[int, int] | None = None
) -> dict[int, tuple[int, int]]:
    """``{source id: (references, their sync_ref_digest)}`` for the sources of ``e`` (live or not:
    the caller looks up its live ones; those with ids in ``span`` only, when given) that should
    carry any: the number and the digest of the distinct references their live edges to live rows
    give (what ``sync_ref_count`` and ``sync_ref_digest`` hold when the object is right)."""
    if not relations_from(e.collection):
        return {}
    refs = _reference_digests(e, span)
    q = sa.select(refs.c.source_id, refs.c.n, refs.c.digest % digests.MODULUS)
    with engine.connect() as conn:
        return {int(i): (int(n), int(d)) for i, n, d in conn.execute(q)}


def digest_buckets(
    engine: Engine,
    e: EntityType,
    fingerprint: int,
    low: int,
    rows: bool = True,
    references: bool = True,
    where: sa.ColumnElement[bool] | None = None,
    reference_counts: bool = False,
) -> dict[int, digests.Sums]:
    """``{bucket: (live rows, sum of their digests)}`` for the live rows with ids from ``low`` (and
    ``where``), bucket ``b`` holding ids ``[low + b * BUCKET, low + (b + 1) * BUCKET)``. The sum
    adds the rows' parts (``sync_digest``, with ``rows``) and their references' (``sync_ref_digest``,
    with ``references``; and ``sync_ref_count``, with ``reference_counts`` too), each from one query
    of its own: joined, they cost more than apart."""
    t = table_for(e)
    bucket = ((t.c.id - low) // digests.BUCKET).label("bucket")
    part = digests.object_digest_sql(e, t, fingerprint)
    q = sa.select(bucket, sa.func.count(), sa.func.sum(part) if rows else sa.literal(0))
    q = q.where(t.c[e.soft_delete_column].is_(None), t.c.id >= low).group_by(bucket)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        out = {int(b): (int(n), int(s)) for b, n, s in conn.execute(q)}
        if references and relations_from(e.collection):
            refs = _reference_digests(e)
            summed = refs.c.digest % digests.MODULUS
            q = (
                sa.select(bucket, sa.func.sum(summed + refs.c.n if reference_counts else summed))
                .select_from(refs.join(t, t.c.id == refs.c.source_id))
                .where(t.c[e.soft_delete_column].is_(None), t.c.id >= low)
                .group_by(bucket)
            )
            for b, s in conn.execute(q):
                n, rest = out.get(int(b), (0, 0))
                out[int(b)] = (n, rest + int(s))
    return out
