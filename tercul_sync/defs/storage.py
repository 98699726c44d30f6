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

``PooledPostgresStorage`` is ``DagsterPostgresStorage`` with that same
public switch made when the storage is created, in every process that loads
the instance: one connection kept per storage and process, more opened while
threads need them (``max_overflow``) and closed when returned, every
connection replaced after ``pool_recycle`` seconds. No statement timeout is
set (the webserver's own call still sets its own). A connection broken by a
PostgreSQL restart fails the one storage call that finds it broken, as it
does in the webserver. Select it in ``dagster.yaml``:

.. code-block:: yaml

    storage:
      custom:
        module: tercul_sync.defs.storage
        class: PooledPostgresStorage
        config:
          postgres_db: {...}   # the same fields as dagster-postgres's
"""

from __future__ import annotations

from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

POOL_RECYCLE_S = 3_600  # seconds before a kept connection is replaced
MAX_OVERFLOW = 10  # connections opened beyond the kept one while threads need them
NO_STATEMENT_TIMEOUT = 0


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose run, event and schedule storages each keep a connection open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            storage.optimize_for_webserver(NO_STATEMENT_TIMEOUT, POOL_RECYCLE_S, MAX_OVERFLOW)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
