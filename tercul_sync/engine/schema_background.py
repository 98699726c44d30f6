"""The schema made on a thread of its own, each step waiting only for the collections it writes.

Weaviate takes about 150 ms to create a collection, however it is asked: its FSM applies schema
changes one at a time, and 1.39's ``Migrator.AddClass`` first waits out a backoff looking for the
index it is about to create (``DB.GetIndex``, "TODO-RAFT remove backoff"). The eight collections
of an empty Weaviate cost 1.2 to 1.4 s of waiting that uses no CPU. Made in the background, in
``sync_order`` (targets first), the first entity step starts writing once its own collection is
there, while the next ones are still being made.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

import weaviate

from tercul_sync.engine.settings import Settings
from tercul_sync.engine.weaviate_schema import ensure_schema


class SchemaInBackground:
    """``ensure_schema`` running on a thread; ``wait`` for some collections, or for all of it."""

    def __init__(self, client: weaviate.WeaviateClient, settings: Settings) -> None:
        self.settings = settings
        self._client = client
        self._ready: dict[str, list[str]] = {}  # collection -> what was changed for it
        self._told: set[str] = set()  # collections whose changes a wait already returned
        self._error: BaseException | None = None
        self._done = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="tercul-schema", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            ensure_schema(self._client, self.settings, on_ready=self._mark)
        except BaseException as exc:  # raised in the step that waits for what it did not make
            with self._changed:
                self._error = exc
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def _mark(self, collection: str, changes: list[str]) -> None:
        with self._changed:
            self._ready[collection] = list(changes)
            self._changed.notify_all()

    def wait(self, collections: Collection[str] | None = None) -> list[str]:
        """Block until ``collections`` (registry names; None: every one) are ready; return the changes
        made for them that no earlier ``wait`` returned. Raises the schema's error (a mismatch, a
        refusal) if it stopped before they were ready."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._done or (collections is not None and all(c in self._ready for c in collections))
            )
            wanted = list(self._ready) if collections is None else list(collections)
            if self._error is not None and (collections is None or any(c not in self._ready for c in wanted)):
                raise self._error
            fresh = [c for c in wanted if c in self._ready and c not in self._told]
            self._told.update(fresh)
            return [change for c in fresh for change in self._ready[c]]

    @property
    def failed(self) -> bool:
        """It stopped on an error: the next step (or the retry of this one) must ask again, as the
        error may have been a passing one (a timeout while the server was busy)."""
        with self._changed:
            return self._done and self._error is not None

    def close(self) -> None:
        """Wait for the thread (it ends by itself: every request it makes has a timeout)."""
        self._thread.join()
