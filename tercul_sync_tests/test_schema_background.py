"""The schema made on a thread of its own (``engine/schema_background.py``), against a real Weaviate."""

from __future__ import annotations

import threading
import time

import pytest
from weaviate.classes.config import DataType, Property

from tercul_sync.defs.resources import WeaviateResource
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import PASSAGE_COLLECTION, RELATIONS, sync_order
from tercul_sync.engine.schema_background import SchemaInBackground
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import SchemaMismatchError, ensure_schema, resolve

pytestmark = pytest.mark.services


def test_each_collection_is_ready_with_its_references_before_the_next_one_is_made(weaviate_client):
    """What lets the first step write while the others' collections are still being made: each
    collection is announced as soon as it and all its references exist, not at the end."""
    order = [e.collection for e in sync_order()]
    seen: list[tuple[str, set[str], set[str]]] = []

    def ready(collection: str, changes: list[str]) -> None:
        physical = resolve(weaviate_client, collection)
        assert physical is not None, f"{collection} announced before it exists"
        refs = {r.name for r in weaviate_client.collections.use(physical).config.get().references}
        existing = {c for c in order if resolve(weaviate_client, c) is not None}
        seen.append((collection, refs, existing))
        assert changes, f"{collection} was made on an empty Weaviate, yet no change was reported for it"

    ensure_schema(weaviate_client, load_settings(vectorizer="none"), on_ready=ready)
    announced = [c for c, _, _ in seen]
    assert announced[: len(order)] == order
    assert announced[len(order) :] == [PASSAGE_COLLECTION]
    for collection, refs, existing in seen[: len(order)]:
        assert {r.name for r in RELATIONS if r.source == collection} <= refs
        later = order[order.index(collection) + 1 :]
        assert not existing & set(later), f"{collection} was announced only after {existing & set(later)}"


def test_a_step_waits_for_its_own_collections_and_gets_the_errors_of_those_only(weaviate_client):
    order = [e.collection for e in sync_order()]
    broken = order[3]  # made after the first three, before the others
    weaviate_client.collections.create(broken, properties=[Property(name="name", data_type=DataType.INT)])
    schema = SchemaInBackground(weaviate_client, load_settings(vectorizer="none"))
    try:
        first = schema.wait([order[0]])
        assert any(order[0] in change for change in first), first
        assert schema.wait([order[0]]) == [], "each change is told once"
        with pytest.raises(SchemaMismatchError, match=f"{broken}.name is int"):
            schema.wait([broken])
        with pytest.raises(SchemaMismatchError):
            schema.wait(None)  # the edges and passages steps wait for every collection
        assert schema.wait(order[1:3]), "made before the broken one, still ready"
    finally:
        schema.close()
    assert resolve(weaviate_client, order[-1]) is None, "nothing is made after the mismatch"


def test_after_an_error_the_next_step_asks_again(weaviate_server_proc, weaviate_client):
    """An error may pass (a timeout while the server was busy): the resource starts the schema
    again for the next step, or the retry of the one that failed, instead of raising it forever."""
    order = [e.collection for e in sync_order()]
    broken = order[3]
    weaviate_client.collections.create(broken, properties=[Property(name="name", data_type=DataType.INT)])
    resource = WeaviateResource(url=weaviate_server_proc.url, grpc_port=weaviate_server_proc.grpc_port)
    settings = load_settings(vectorizer="none")
    with pytest.raises(SchemaMismatchError):
        resource.ensure_schema(settings, [broken])
    weaviate_client.collections.delete(broken)  # mended meanwhile
    try:
        assert any(broken in change for change in resource.ensure_schema(settings, [broken]))
        resource.ensure_schema(settings, None)
    finally:
        if resource._made_schema is not None:
            resource._made_schema.close()
        resource.client.close()
    assert resolve(weaviate_client, order[-1]) is not None


def test_a_read_of_a_collection_another_process_is_still_making_waits_for_it(weaviate_client):
    """Parallel steps each ensure the schema: a step can find a collection that another step's process
    made a moment ago and read it before this node has loaded it. Weaviate then answers gRPC UNKNOWN
    ("could not find class ... in schema", or "tried to browse non-existing index"); the read waits
    and tries again (errors.NOT_YET_LOADED_MARKERS) instead of failing the step. Here the collection
    comes 0.8 s after the first read."""
    made_at: list[float] = []

    def make_later() -> None:
        time.sleep(0.8)
        weaviate_client.collections.create(
            "Late_v1", properties=[Property(name="title", data_type=DataType.TEXT)]
        )
        made_at.append(time.monotonic())

    maker = threading.Thread(target=make_later)
    started = time.monotonic()
    maker.start()
    try:
        assert wc.count_objects(weaviate_client, "Late_v1") == 0
    finally:
        maker.join()
    assert made_at and made_at[0] - started >= 0.8  # the first attempts did meet the missing class
