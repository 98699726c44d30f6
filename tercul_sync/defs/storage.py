"""Dagster's PostgreSQL storage, keeping its connections open.

``dagster-postgres`` opens a new connection for every read and write of its
run, event and schedule storage (SQLAlchemy's ``NullPool``), so that an
instance holds nothing open between uses. A run stores one event per step
start, log line, materialization, check and step end, and each is at least
one new connection: TCP, a ``scram-sha-256`` handshake and a PostgreSQL
backend started for it, 10 to 25 ms on this machine. ``dagster-webserver``
avoids that cost by calling the storages' own ``optimize_for_webserver``,
which swaps in a pool of one connection; run workers, step processes and the
daemon do not.

``PooledPostgresStorage`` is ``DagsterPostgresStorage`` whose run and event
log storages get the same kind of pool when they are created, in every
process that loads the instance: one connection kept per storage and
process, more opened while threads need them (``max_overflow``) and closed
when returned, every connection replaced after ``pool_recycle`` seconds,
and the kept one closed when the instance is disposed of (Dagster's own
pool never closes it: an instance made per sensor tick would leave its
connections open). No statement timeout is set (the webserver's own call
still sets its own). Each use pings the connection first (``pool_pre_ping``,
a round trip of well under a millisecond), so one that a PostgreSQL restart
broke is replaced instead of failing a run's event write.

Each process that loads the instance creates the tables it finds missing.
On a new database, processes starting together (Celery workers, a run
worker, the daemon) race to do it; dagster-postgres retries a lost race on
some tables but not on others (``instance_info``, the ``pending_steps``
type), and CI lost a Celery worker to "relation instance_info already
exists". So the storages are made under a PostgreSQL advisory lock
(``SCHEMA_LOCK_KEY``): one process at a time finds and creates what is
missing, the others then find it there. A process looks once per database: an instance it
makes again (a sensor tick's), and the step processes forked from a run worker (``executors.py``)
that had looked, skip the lock and the look (50 ms a process, four at a time queued on the lock
when a wave of steps starts). Select it in ``dagster.yaml``:

.. code-block:: yaml

    storage:
      custom:
        module: tercul_sync.defs.storage
        class: PooledPostgresStorage
        config:
          postgres_db: {...}   # the same fields as dagster-postgres's
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from dagster_postgres.auth import PgTokenProvider
    from sqlalchemy.engine import Connection

POOL_RECYCLE_S = 3_600  # seconds before a kept connection is replaced
MAX_OVERFLOW = 10  # connections opened beyond the kept one while threads need them
SCHEMA_LOCK_KEY = 0x7465726375_01  # pg_advisory_lock key held while a process makes Dagster's tables


# Storage URLs whose tables this process found or made (inherited by the step processes it forks).
_TABLES_FOUND: set[str] = set()
# Every pooled engine of this process: a forked child (executors.py) must not use their connections.
_POOLED: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    """In a forked child: drop the pools' connections without closing them (closing would end the
    parent's session, whose socket the child shares), so the child opens its own if it needs one."""
    for engine in list(_POOLED):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def pooled_engine(postgres_url: str, token_provider: PgTokenProvider | None) -> sa.Engine:
    """The engine ``optimize_for_webserver`` makes (autocommit, one connection kept), with no
    statement timeout and a ping before each use: a connection PostgreSQL dropped (a restart) is
    replaced before the call, not found broken by it."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        max_overflow=MAX_OVERFLOW,
        pool_recycle=POOL_RECYCLE_S,
        pool_pre_ping=True,
    )
    _POOLED.add(engine)
    return engine


@contextlib.contextmanager
def one_process_at_a_time(postgres_url: str, token_provider: PgTokenProvider | None) -> Iterator[None]:
    """Hold the advisory lock ``SCHEMA_LOCK_KEY`` on a connection of its own: waits for any other
    process holding it (making the tables), and is released when the connection closes."""
    engine = create_pg_engine(postgres_url, token_provider, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield
    finally:
        engine.dispose()


class _KeptConnection:
    """For a dagster-postgres storage (listed after it): its engine pooled, its connections closed
    by ``dispose``."""

    _engine: sa.Engine

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)  # type: ignore[call-arg]
        self._engine.dispose()
        self._engine = pooled_engine(postgres_url, token_provider)

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()  # the kept connection: an instance that is done holds none


class _RemembersWhatExists:
    """For a Dagster SQL storage: remembers each table or column it found.

    Dagster asks whether a table or column exists (a migration may have added it) on its hot paths,
    each time with a connection of its own and, for a column, a reflection of the whole table. Found
    once, it stays found (Dagster never drops one at run time); not found, it is asked again next
    time, as a migration may add it meanwhile.
    """

    _found: frozenset[str] = frozenset()  # per storage: each instance adds what it finds

    def _exists(self, what: str, ask: Callable[[], bool]) -> bool:
        if what not in self._found and ask():
            self._found = self._found | {what}
        return what in self._found


class PooledRunStorage(_KeptConnection, _RemembersWhatExists, PostgresRunStorage):
    """dagster-postgres's run storage on a pooled engine, remembering which columns exist.

    It reflects ``runs`` on every run it adds and every run record it reads (twice per step in a
    run: ``has_run_stats_index_cols``), and ``bulk_actions`` for backfills.
    """

    def has_run_stats_index_cols(self) -> bool:
        return self._exists("runs.stats_index_cols", super().has_run_stats_index_cols)

    def has_backfill_id_column(self) -> bool:
        return self._exists("runs.backfill_id", super().has_backfill_id_column)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._exists("bulk_actions.selector_cols", super().has_bulk_actions_selector_cols)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._exists("bulk_actions.job_name", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._exists("backfill_tags", super().has_backfill_tags_table)


class PooledEventLogStorage(_KeptConnection, _RemembersWhatExists, PostgresEventLogStorage):
    """dagster-postgres's event log storage on a pooled engine, remembering which tables and
    columns exist.

    Dagster asks ``has_table`` on every materialization (does the asset-tags table exist?) and every
    check evaluation, from inside the connection that stores the event: a second connection each
    time, which the pool closes on return (it keeps one), so a new connection and handshake per
    event. It reflects ``asset_keys`` (``has_asset_key_col``: may it read the status cache, are the
    index columns there?) on each asset record it reads, several times per step.
    """

    def has_table(self, table_name: str) -> bool:
        return self._exists(table_name, lambda: super(PooledEventLogStorage, self).has_table(table_name))

    def has_asset_key_col(self, column_name: str) -> bool:
        return self._exists(
            f"asset_keys.{column_name}",
            lambda: super(PooledEventLogStorage, self).has_asset_key_col(column_name),
        )

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        return self._exists(
            f"asset_keys.{column_name}",
            lambda: super(PooledEventLogStorage, self)._has_asset_key_col_on_connection(conn, column_name),
        )


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose run and event log storages keep a connection open.

    The schedule storage stays as dagster-postgres makes it (a connection per call): the
    instance never disposes of it, and outside the daemon it is seldom used.
    """

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ) -> None:
        # The attributes DagsterPostgresStorage.__init__ sets, with the pooled storages made in
        # place of its own (calling it would make each storage twice: twice the connections).
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        # Tables this process (or the run worker it was forked from) found or made are still there.
        look = should_autocreate_tables and postgres_url not in _TABLES_FOUND
        with one_process_at_a_time(postgres_url, token_provider) if look else contextlib.nullcontext():
            self._run_storage = PooledRunStorage(postgres_url, look, None, token_provider)
            self._event_log_storage = PooledEventLogStorage(postgres_url, look, None, token_provider)
            self._schedule_storage = PostgresScheduleStorage(
                postgres_url, look, token_provider=token_provider
            )
        if look:
            _TABLES_FOUND.add(postgres_url)
        super(DagsterPostgresStorage, self).__init__()  # what comes after its __init__ in the MRO

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> PooledPostgresStorage:
        return cls(
            pg_url_from_config(config_value),
            config_value.get("should_autocreate_tables", True),
            inst_data,
            get_token_provider_from_config(config_value),
        )
