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
broke is replaced instead of failing a run's event write. Select it in
``dagster.yaml``:

.. code-block:: yaml

    storage:
      custom:
        module: tercul_sync.defs.storage
        class: PooledPostgresStorage
        config:
          postgres_db: {...}   # the same fields as dagster-postgres's
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

if TYPE_CHECKING:
    from dagster_postgres.auth import PgTokenProvider

POOL_RECYCLE_S = 3_600  # seconds before a kept connection is replaced
MAX_OVERFLOW = 10  # connections opened beyond the kept one while threads need them


def pooled_engine(postgres_url: str, token_provider: PgTokenProvider | None) -> sa.Engine:
    """The engine ``optimize_for_webserver`` makes (autocommit, one connection kept), with no
    statement timeout and a ping before each use: a connection PostgreSQL dropped (a restart) is
    replaced before the call, not found broken by it."""
    return create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        max_overflow=MAX_OVERFLOW,
        pool_recycle=POOL_RECYCLE_S,
        pool_pre_ping=True,
    )


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


class PooledRunStorage(_KeptConnection, PostgresRunStorage):
    """dagster-postgres's run storage on a pooled engine."""


class PooledEventLogStorage(_KeptConnection, PostgresEventLogStorage):
    """dagster-postgres's event log storage on a pooled engine."""


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
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._run_storage = PooledRunStorage(postgres_url, should_autocreate_tables, None, token_provider)
        self._event_log_storage = PooledEventLogStorage(
            postgres_url, should_autocreate_tables, None, token_provider
        )

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
