"""Trigger tercul_sync from other services: launch its jobs on a running Dagster deployment.

Imports: dagster-graphql (the webserver's GraphQL client), engine/ (settings, registry). Not the
Dagster definitions: a service that triggers runs does not load the code location.
"""

from tercul_sync.trigger.client import (
    DagsterUnreachableError,
    RunOutcome,
    SyncTrigger,
    TriggerError,
    enqueue_edge_sync,
    enqueue_entity_sync,
    enqueue_full_sync,
    enqueue_rows,
)

__all__ = [
    "DagsterUnreachableError",
    "RunOutcome",
    "SyncTrigger",
    "TriggerError",
    "enqueue_edge_sync",
    "enqueue_entity_sync",
    "enqueue_full_sync",
    "enqueue_rows",
]
