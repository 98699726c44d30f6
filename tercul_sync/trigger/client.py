"""Launch tercul_sync's jobs on a running Dagster deployment, through its GraphQL API.

The old Go queue's tasks, for Tercul's Python services:

    enqueue_entity_sync("Work")                     # EnqueueEntitySync(client, "Work")
    enqueue_edge_sync(batch_size=100, offset=0)     # EnqueueEdgeSync(client, 100, 0)
    enqueue_full_sync()                             # EnqueueFullSync(client)
    enqueue_rows("Work", [42, 43])                  # exactly these rows, now

Each launches one run of a job of the code location (``sync_work``,
``sync_edges``, ``full_sync``) with dagster-graphql's ``DagsterGraphQLClient``
and returns its run id. The jobs carry their own tags (every shard, their
mode), so the deployment's shard count applies, not this process's. With
``wait=True`` the call polls until the run ends and returns a ``RunOutcome``.
The webserver's address and token come from ``TERCUL_SYNC_DAGSTER_URL``,
``TERCUL_SYNC_DAGSTER_TOKEN`` (and ``_TOKEN_HEADER``) and
``TERCUL_SYNC_DAGSTER_LOCATION``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload
from urllib.parse import urlsplit

import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport.exceptions import TransportConnectionFailed, TransportServerError

from tercul_sync.engine.errors import exception_chain
from tercul_sync.engine.registry import entity
from tercul_sync.engine.settings import Settings, load_settings

REPOSITORY = "__repository__"  # the one repository of a Definitions-based code location
TRIGGER_TAG = "tercul_sync/trigger"  # the same tag the schedules and the sensor set (defs/jobs.py)
TRIGGER_VALUE = "client"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
EDGES_ASSET = "edges"  # the edges asset's op name (defs/assets.py)

# No answer at all: refused or dropped connections, DNS failures, timeouts.
UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    TransportConnectionFailed,
    ConnectionError,
    TimeoutError,
)


class TriggerError(RuntimeError):
    """Dagster did not launch or report the run: refused token, unknown job or location, bad run config."""


class DagsterUnreachableError(TriggerError):
    """No answer from the Dagster webserver at the configured address."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``status`` is Dagster's, ``SUCCESS``, ``FAILURE`` or ``CANCELED``."""

    run_id: str
    status: str

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCESS"


class SyncTrigger:
    """One Dagster deployment: launches runs of tercul_sync's jobs and reads their status."""

    def __init__(self, settings: Settings | None = None, request_timeout: int = 30) -> None:
        self.settings = settings or load_settings()
        self.url = self.settings.dagster_url.rstrip("/")
        parts = urlsplit(self.url)
        headers: dict[str, str] = {}
        if self.settings.dagster_token is not None:
            token = self.settings.dagster_token.get_secret_value()
            name = self.settings.dagster_token_header
            headers[name] = f"Bearer {token}" if name.lower() == "authorization" else token
        assert parts.hostname is not None  # the setting's pattern requires a host
        self._client = DagsterGraphQLClient(
            parts.hostname,
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=request_timeout,
            headers=headers or None,
            path_prefix=parts.path.rstrip("/"),
        )

    def launch(self, job: str, run_config: Mapping[str, Any] | None = None) -> str:
        """Launch one run of ``job``; return its run id (the run is queued until the daemon starts it)."""
        try:
            return self._client.submit_job_execution(
                job,
                repository_location_name=self.settings.dagster_location,
                repository_name=REPOSITORY,
                run_config=dict(run_config or {}),
                tags={TRIGGER_TAG: TRIGGER_VALUE},
            )
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"launch {job}") from exc

    def status(self, run_id: str) -> str:
        """The run's status now, e.g. ``QUEUED``, ``STARTED``, ``SUCCESS``."""
        try:
            return str(self._client.get_run_status(run_id).value)
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"read the status of run {run_id}") from exc

    def wait(self, run_id: str, timeout: float | None = None, poll_seconds: float = 1.0) -> RunOutcome:
        """Poll until the run has ended; ``TimeoutError`` after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status(run_id)) not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {status} after {timeout:g} s ({self.url})")
            time.sleep(poll_seconds)
        return RunOutcome(run_id, status)

    def _error(self, exc: DagsterGraphQLClientError, doing: str) -> TriggerError:
        causes = list(exception_chain(exc))
        down = [
            c
            for c in causes
            if isinstance(c, UNREACHABLE)
            or (isinstance(c, TransportServerError) and c.code in (502, 503, 504))
        ]
        if down:
            reason = str(causes[-1]) or type(down[0]).__name__  # the innermost: "Connection refused"
            return DagsterUnreachableError(
                f"Dagster at {self.url} is not reachable ({reason}), so tercul_sync could not {doing}: "
                "is dagster-webserver running there? (TERCUL_SYNC_DAGSTER_URL)"
            )
        refused = [c for c in causes if isinstance(c, TransportServerError) and c.code in (401, 403)]
        if refused:
            return TriggerError(
                f"Dagster at {self.url} refused to {doing} ({refused[0].code}): "
                "check TERCUL_SYNC_DAGSTER_TOKEN and TERCUL_SYNC_DAGSTER_TOKEN_HEADER"
            )
        detail = ": ".join(str(a) for a in exc.args)
        body = f" {exc.body}" if exc.body is not None else ""
        return TriggerError(f"Dagster at {self.url} did not {doing}: {detail}{body}")


def _finish(trigger: SyncTrigger, run_id: str, wait: bool, timeout: float | None) -> str | RunOutcome:
    return trigger.wait(run_id, timeout) if wait else run_id


@overload
def enqueue_entity_sync(
    collection: str,
    *,
    wait: Literal[False] = False,
    timeout: float | None = None,
    settings: Settings | None = None,
) -> str: ...
@overload
def enqueue_entity_sync(
    collection: str, *, wait: Literal[True], timeout: float | None = None, settings: Settings | None = None
) -> RunOutcome: ...
def enqueue_entity_sync(
    collection: str, *, wait: bool = False, timeout: float | None = None, settings: Settings | None = None
) -> str | RunOutcome:
    """Sync one entity type (a collection name, e.g. ``Work``) over every shard: the job ``sync_work``."""
    e = entity(collection)  # an unknown name fails here, listing the known ones
    trigger = SyncTrigger(settings)
    return _finish(trigger, trigger.launch(f"sync_{e.collection.lower()}"), wait, timeout)


@overload
def enqueue_edge_sync(
    batch_size: int | None = None,
    offset: int = 0,
    *,
    wait: Literal[False] = False,
    timeout: float | None = None,
    settings: Settings | None = None,
) -> str: ...
@overload
def enqueue_edge_sync(
    batch_size: int | None = None,
    offset: int = 0,
    *,
    wait: Literal[True],
    timeout: float | None = None,
    settings: Settings | None = None,
) -> RunOutcome: ...
def enqueue_edge_sync(
    batch_size: int | None = None,
    offset: int = 0,
    *,
    wait: bool = False,
    timeout: float | None = None,
    settings: Settings | None = None,
) -> str | RunOutcome:
    """Rewrite the sources of edge rows ``offset .. offset + batch_size`` (id order); no batch_size:
    every edge. The job ``sync_edges``."""
    if batch_size is not None and (batch_size < 1 or offset < 0):
        raise ValueError(f"batch_size must be at least 1 and offset at least 0, got {batch_size}, {offset}")
    config = {} if batch_size is None else {"batch_size": batch_size, "offset": offset}
    trigger = SyncTrigger(settings)
    run_id = trigger.launch("sync_edges", {"ops": {EDGES_ASSET: {"config": config}}} if config else None)
    return _finish(trigger, run_id, wait, timeout)


@overload
def enqueue_full_sync(
    *, wait: Literal[False] = False, timeout: float | None = None, settings: Settings | None = None
) -> str: ...
@overload
def enqueue_full_sync(
    *, wait: Literal[True], timeout: float | None = None, settings: Settings | None = None
) -> RunOutcome: ...
def enqueue_full_sync(
    *, wait: bool = False, timeout: float | None = None, settings: Settings | None = None
) -> str | RunOutcome:
    """Every entity type, then the edges and passages, over every shard: the job ``full_sync``."""
    trigger = SyncTrigger(settings)
    return _finish(trigger, trigger.launch("full_sync"), wait, timeout)


@overload
def enqueue_rows(
    collection: str,
    ids: Sequence[int],
    *,
    wait: Literal[False] = False,
    timeout: float | None = None,
    settings: Settings | None = None,
) -> str: ...
@overload
def enqueue_rows(
    collection: str,
    ids: Sequence[int],
    *,
    wait: Literal[True],
    timeout: float | None = None,
    settings: Settings | None = None,
) -> RunOutcome: ...
def enqueue_rows(
    collection: str,
    ids: Sequence[int],
    *,
    wait: bool = False,
    timeout: float | None = None,
    settings: Settings | None = None,
) -> str | RunOutcome:
    """Sync exactly these rows of one entity type now: live ones written, the objects of soft-deleted or
    removed ones deleted. The job ``sync_<type>`` with the asset's run config ``ids``; no cursor moves."""
    e = entity(collection)
    chosen = sorted({int(i) for i in ids})
    if not chosen:
        raise ValueError("enqueue_rows needs at least one id")
    trigger = SyncTrigger(settings)
    run_id = trigger.launch(
        f"sync_{e.collection.lower()}", {"ops": {e.collection: {"config": {"ids": chosen}}}}
    )
    return _finish(trigger, run_id, wait, timeout)
