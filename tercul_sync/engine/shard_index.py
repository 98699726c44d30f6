"""Optional PostgreSQL expression indexes on ``(id % n, id)``: each shard reads only its own rows.

Without them a shard's keyset page (``WHERE id % n = k AND id > last ORDER BY id``) walks the primary
key and filters out the other shards' rows, so each of the ``n`` shards reads the whole table. With
the index it reads its own ``1/n``. ``Shard.clause`` writes the modulus as a literal, so the WHERE
is the indexed expression exactly. An index serves one shard count: create it again after changing
``TERCUL_SYNC_SHARDS`` (and drop the old one). ``tercul-sync index --shards N`` runs this.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tercul_sync.engine.registry import ENTITIES


def index_name(table: str, shards: int) -> str:
    return f"{table}_id_mod_{shards}"


def index_statements(shards: int, drop: bool = False) -> list[str]:
    """The DDL for every entity table; ``CONCURRENTLY``: writers are not blocked while it builds."""
    if not 2 <= shards <= 64:
        raise ValueError(f"shards must be between 2 and 64, got {shards}")
    out = []
    for e in ENTITIES:
        name = index_name(e.table, shards)
        if drop:
            out.append(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        else:
            out.append(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{e.table}" ((id % {shards}), id)'
            )
    return out


def create_shard_indexes(engine: Engine, shards: int, drop: bool = False) -> list[str]:
    """Run ``index_statements`` on PostgreSQL (outside a transaction, as CONCURRENTLY needs)."""
    if engine.dialect.name != "postgresql":
        raise ValueError(f"shard indexes are for PostgreSQL; this database is {engine.dialect.name}")
    done = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in index_statements(shards, drop):
            conn.execute(sa.text(statement))
            done.append(statement)
    return done
