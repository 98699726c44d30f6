"""An optional log of rows removed outright, kept by triggers in Tercul's PostgreSQL database.

A hard ``DELETE`` leaves nothing for a cursor to follow. Without the log, an
incremental run finds such rows by comparing counts over id ranges, and when
they are everywhere it walks every object (docs/incremental.md). With the log,
each ``DELETE`` on an entity table or on ``edges`` also writes the removed ids
into ``tercul_sync_deletes``, in the same transaction. An incremental run then
reads the ids logged since its cursor, as it reads soft deletes: the objects of
removed rows are deleted, and the sources of removed edges and removed targets
are rewritten. The entity steps' counts still run after it; the edges step skips
its costly count check only when every cursor it starts from had read the log
recently (``covers``), so a delete the log missed (one before the log was
installed, rows pruned before a run read them) is still found, the slower way.
A ``TRUNCATE`` names no rows: a statement trigger logs the table alone (an entry
without a row id), and a run that finds one since its cursor does not trust the
log for that table: the counts find what went, as without the log.

``tercul-sync delete-log`` installs it (``--drop`` removes it). It is used when
the table exists, the role may read it and every logged table has its trigger;
nothing needs to be configured. The triggers are statement triggers with a
transition table: one ``INSERT ... SELECT`` per ``DELETE`` statement, however
many rows it removes. Their functions are ``SECURITY DEFINER``, so the roles that
delete rows need no grant on the log. They are enabled ``ALWAYS``: they fire in
sessions with ``session_replication_role = replica`` too (a logical replication
subscriber applying deletes, some restore tools). The full sync's edges step prunes entries
older than ``TERCUL_SYNC_DELETE_LOG_DAYS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tercul_sync.engine import reading
from tercul_sync.engine.objects import as_utc
from tercul_sync.engine.registry import EDGES_TABLE, ENTITIES

LOG_TABLE = "tercul_sync_deletes"
TRIGGER = "tercul_sync_log_deletes"
TRUNCATE_TRIGGER = "tercul_sync_log_truncates"
TRIGGERS = (TRIGGER, TRUNCATE_TRIGGER)
ROW_FUNCTION = "tercul_sync_log_row_deletes"
EDGE_FUNCTION = "tercul_sync_log_edge_deletes"
TRUNCATE_FUNCTION = "tercul_sync_log_truncates"

LOG = sa.Table(
    LOG_TABLE,
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("row_id", sa.BigInteger),  # None: the whole table was truncated
    # For edges: the source whose references the removed edge changed.
    sa.Column("source_table", sa.Text),
    sa.Column("source_id", sa.BigInteger),
    sa.Column("relation", sa.Text),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
)


def logged_tables() -> list[str]:
    """The tables whose deletes are logged: every entity table of the registry, and ``edges``."""
    return [e.table for e in ENTITIES] + [EDGES_TABLE]


def install_statements(schema: str, drop: bool = False) -> list[str]:
    """The DDL that installs the log in ``schema`` (idempotent), or with ``drop`` removes it."""
    tables = logged_tables()
    functions = (ROW_FUNCTION, EDGE_FUNCTION, TRUNCATE_FUNCTION)
    if drop:
        return (
            [f'DROP TRIGGER IF EXISTS {trigger} ON "{t}"' for t in tables for trigger in TRIGGERS]
            + [f'DROP FUNCTION IF EXISTS "{schema}".{f}()' for f in functions]
            + [f'DROP TABLE IF EXISTS "{schema}".{LOG_TABLE}']
        )
    log = f'"{schema}".{LOG_TABLE}'
    out = [
        f"CREATE TABLE IF NOT EXISTS {log} ("
        " id bigserial PRIMARY KEY, table_name text NOT NULL, row_id bigint NOT NULL,"
        " source_table text, source_id bigint, relation text,"
        " logged_at timestamptz NOT NULL DEFAULT now())",
        f"CREATE INDEX IF NOT EXISTS {LOG_TABLE}_by_table ON {log} (table_name, logged_at)",
        f"ALTER TABLE {log} ALTER COLUMN row_id DROP NOT NULL",  # a log installed before truncates were
    ]
    edge_columns = "source_table, source_id, relation"
    for function, extra in ((ROW_FUNCTION, ""), (EDGE_FUNCTION, f", {edge_columns}")):
        # SECURITY DEFINER: whoever deletes needs no grant on the log. Such a function must not depend
        # on the caller's search_path, so it has none of its own and names the log's schema.
        out.append(
            f'CREATE OR REPLACE FUNCTION "{schema}".{function}() RETURNS trigger LANGUAGE plpgsql'
            " SECURITY DEFINER SET search_path = pg_catalog AS $body$"
            f" BEGIN INSERT INTO {log} (table_name, row_id{extra})"
            f" SELECT TG_TABLE_NAME, id{extra} FROM gone; RETURN NULL; END $body$"
        )
    out.append(
        f'CREATE OR REPLACE FUNCTION "{schema}".{TRUNCATE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql'
        " SECURITY DEFINER SET search_path = pg_catalog AS $body$"
        f" BEGIN INSERT INTO {log} (table_name) VALUES (TG_TABLE_NAME); RETURN NULL; END $body$"
    )
    for t in tables:
        function = EDGE_FUNCTION if t == EDGES_TABLE else ROW_FUNCTION
        out.append(
            f'CREATE OR REPLACE TRIGGER {TRIGGER} AFTER DELETE ON "{t}"'
            f' REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".{function}()'
        )
        out.append(
            f'CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON "{t}"'
            f' FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".{TRUNCATE_FUNCTION}()'
        )
        out += [f'ALTER TABLE "{t}" ENABLE ALWAYS TRIGGER {trigger}' for trigger in TRIGGERS]
    return out


def install(engine: Engine, drop: bool = False, grant_to: str | None = None) -> list[str]:
    """Install the log in the connection's current schema, in one transaction (PostgreSQL 14 or
    later, for ``CREATE OR REPLACE TRIGGER``), or with ``drop`` remove it; the statements run.
    ``grant_to``: the sync's role, which reads the log and prunes it."""
    if engine.dialect.name != "postgresql":
        raise ValueError(f"the delete log is for PostgreSQL; this database is {engine.dialect.name}")
    with engine.begin() as conn:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
        statements = install_statements(schema, drop)
        if grant_to and not drop:
            statements.append(f'GRANT SELECT, DELETE ON "{schema}".{LOG_TABLE} TO "{grant_to}"')
        for statement in statements:
            conn.execute(sa.text(statement))
    return statements


def _privilege(engine: Engine, privilege: str) -> bool | None:
    """None when the log is not installed (or not on PostgreSQL); else whether this role has
    ``privilege`` on it."""
    if engine.dialect.name != "postgresql":
        return None
    q = sa.text("SELECT CASE WHEN to_regclass(:t) IS NULL THEN NULL ELSE has_table_privilege(:t, :p) END")
    with engine.connect() as conn:
        return conn.execute(q, {"t": LOG_TABLE, "p": privilege}).scalar()


def _unlogged_tables(engine: Engine) -> list[str]:
    """The logged tables (``logged_tables``) on which one of the log's triggers is missing or
    disabled: dropped, or gone with a table made anew. Their deletes are not in the log."""
    q = sa.text(
        "SELECT c.relname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid"
        " WHERE g.tgname = ANY(CAST(:triggers AS text[])) AND g.tgenabled <> 'D'"
        " AND g.tgrelid = ANY(SELECT to_regclass(t) FROM unnest(CAST(:tables AS text[])) AS t)"
        " GROUP BY c.relname HAVING count(*) = :n"
    )
    with engine.connect() as conn:
        found = set(
            conn.execute(
                q, {"triggers": list(TRIGGERS), "tables": logged_tables(), "n": len(TRIGGERS)}
            ).scalars()
        )
    return [t for t in logged_tables() if t not in found]


def status(engine: Engine) -> str:
    """``installed`` (then incremental runs read it), ``absent``, or why it is installed but not
    used: this role may not read it, or a table's trigger is missing (its deletes would not be
    there, and a run that trusted the log would miss them)."""
    readable = _privilege(engine, "SELECT")
    if readable is None:
        return "absent"
    if not readable:
        return f"installed, but this role may not read it (GRANT SELECT, DELETE ON {LOG_TABLE} TO ...)"
    unlogged = _unlogged_tables(engine)
    if unlogged:
        return (
            f"installed, but its trigger is missing on {', '.join(unlogged)} "
            "(run tercul-sync delete-log again)"
        )
    return "installed"


def present(engine: Engine) -> bool:
    """Whether incremental runs read the log: it is installed, this role may read it, and every
    logged table has its trigger. Otherwise the count checks find what it would have."""
    return status(engine) == "installed"


def mark(engine: Engine) -> datetime | None:
    """The database's time now, when the log is installed and readable (else None). A cursor that
    records it has read every delete logged before it; one committed late with an older time is
    read again inside the overlap window, as rows are."""
    if not present(engine):
        return None
    with engine.connect() as conn:
        return as_utc(conn.execute(sa.select(sa.func.now())).scalar_one())


def covers(read_at: datetime | None, now: datetime, keep: timedelta) -> bool:
    """Whether a cursor that read the log at ``read_at`` can trust it to name every delete since:
    it read the log at all, and recently enough that nothing it had not read yet was pruned."""
    return read_at is not None and now - read_at < keep


def _since(table: str, after: datetime | None, overlap: timedelta) -> sa.ColumnElement[bool]:
    clause = LOG.c.table_name == table
    return clause if after is None else sa.and_(clause, LOG.c.logged_at > after - overlap)


def truncated(engine: Engine, table: str, after: datetime | None, overlap: timedelta) -> bool:
    """Whether ``table`` was truncated after ``after - overlap``: the log does not name its rows."""
    q = sa.select(LOG.c.id).where(_since(table, after, overlap), LOG.c.row_id.is_(None)).limit(1)
    with engine.connect() as conn:
        return conn.execute(q).first() is not None


def removed_rows(
    engine: Engine,
    table: str,
    shards: Sequence[reading.Shard],
    after: datetime | None,
    overlap: timedelta,
) -> list[tuple[int, datetime]]:
    """``(row id, logged_at)`` of rows of ``table`` in ``shards`` whose deletes were logged after
    ``after - overlap`` (every entry when ``after`` is None)."""
    q = sa.select(LOG.c.row_id, LOG.c.logged_at).where(
        _since(table, after, overlap), LOG.c.row_id.is_not(None), reading.shards_clause(LOG.c.row_id, shards)
    )
    with engine.connect() as conn:
        return [(int(i), as_utc(at)) for i, at in conn.execute(q.order_by(LOG.c.id))]


def removed_edges(
    engine: Engine, shards: Sequence[reading.Shard], after: datetime | None, overlap: timedelta
) -> list[dict[str, Any]]:
    """The edges (by source id in ``shards``) whose deletes were logged after ``after - overlap``:
    ``id``, ``source_table``, ``source_id``, ``relation`` and ``logged_at`` each."""
    q = sa.select(
        LOG.c.row_id.label("id"), LOG.c.source_table, LOG.c.source_id, LOG.c.relation, LOG.c.logged_at
    ).where(
        _since(EDGES_TABLE, after, overlap),
        LOG.c.row_id.is_not(None),
        reading.shards_clause(LOG.c.source_id, shards),
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q.order_by(LOG.c.id)).mappings()]


def prune(engine: Engine, older_than: timedelta) -> int:
    """Delete the entries logged more than ``older_than`` ago; how many. 0 without a log, or when
    this role may not delete from it. A run that has not read them by then finds those deletes by
    the count checks instead."""
    if not _privilege(engine, "DELETE"):
        return 0
    cutoff = datetime.now(UTC) - older_than
    with engine.begin() as conn:
        return int(conn.execute(LOG.delete().where(LOG.c.logged_at < cutoff)).rowcount or 0)
