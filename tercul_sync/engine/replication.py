"""Weaviate clusters: how collections are replicated, and how many replicas must acknowledge a write.

``TERCUL_SYNC_REPLICATION_FACTOR`` is fixed when a collection is created (Weaviate does not change
it by updating the definition), so an existing collection with another factor is reported as a
schema mismatch rather than quietly used. Writes go at ``Settings.consistency_level``: ``QUORUM``
by default when there are replicas, so a sync goes on while one node of three is down.
"""

from __future__ import annotations

from typing import Any, cast

import weaviate
from weaviate.classes.config import Configure, ConsistencyLevel, ReplicationDeletionStrategy
from weaviate.collections.classes.config import ReplicationConfigCreate

from tercul_sync.engine.settings import Settings


def replication_config(settings: Settings | None) -> ReplicationConfigCreate | None:
    """The ``replication_config`` a new collection is created with; None leaves it to the server.

    With replicas, async replication repairs a node that missed writes while it was down (Weaviate
    1.38 and newer turn it on by itself and ignore the flag; older servers need it), and a delete
    newer than an object's last write wins over the object when replicas disagree, so a row deleted
    while a node was down does not come back.
    """
    if settings is None or settings.replication_factor == 1:
        return None
    return Configure.replication(
        factor=settings.replication_factor,
        async_enabled=True,
        deletion_strategy=ReplicationDeletionStrategy.TIME_BASED_RESOLUTION,
    )


def consistency(settings: Settings) -> ConsistencyLevel:
    """The consistency level of writes (``TERCUL_SYNC_WRITE_CONSISTENCY``, else by the factor)."""
    return ConsistencyLevel(settings.consistency_level)


def replication_problems(collection: str, existing_factor: int, settings: Settings | None) -> list[str]:
    """Why an existing collection's replication does not match the settings; empty when it does."""
    if settings is None or existing_factor == settings.replication_factor:
        return []
    return [
        f"{collection} has replication factor {existing_factor} in Weaviate, TERCUL_SYNC_REPLICATION_FACTOR="
        f"{settings.replication_factor}: the factor is fixed when a collection is created; set the variable "
        f"to {existing_factor}, or change the collection's replicas with Weaviate's replica movement "
        "(or rebuild it)"
    ]


class _ConsistentCollections:
    """``client.collections`` whose collection handles carry one consistency level."""

    def __init__(self, collections: Any, level: ConsistencyLevel) -> None:
        self._collections, self._level = collections, level

    def use(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._collections.use(name, *args, **kwargs).with_consistency_level(self._level)

    def get(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._collections.get(name, *args, **kwargs).with_consistency_level(self._level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collections, name)


class _ConsistentClient:
    """A client whose every collection handle reads and writes at one consistency level."""

    def __init__(self, client: weaviate.WeaviateClient, level: ConsistencyLevel) -> None:
        self._client = client
        self.collections = _ConsistentCollections(client.collections, level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def with_consistency(
    client: weaviate.WeaviateClient, level: ConsistencyLevel | str
) -> weaviate.WeaviateClient:
    """``client`` with ``level`` on every collection it hands out (``collections.use`` / ``get``).

    weaviate-client sets consistency per collection handle (``with_consistency_level``); this puts
    it on all of them, so every engine function, the writer's batches and deletes as well as its
    hash and existence reads, goes at the configured level without taking it as an argument.
    """
    return cast("weaviate.WeaviateClient", _ConsistentClient(client, ConsistencyLevel(level)))
