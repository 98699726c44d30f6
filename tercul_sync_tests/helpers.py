"""Running the real assets in process, and reading the truth back from SQL and Weaviate."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import sqlalchemy as sa
import weaviate
from pydantic import PrivateAttr

from tercul_sync.defs.assets import build_assets
from tercul_sync.defs.partitions import all_shards_tags
from tercul_sync.defs.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.devtools.weaviate_server import LocalWeaviate
from tercul_sync.engine.objects import BOOKKEEPING_PROPERTIES, ObjectWrite
from tercul_sync.engine.registry import ENTITIES, RELATIONS, EntityType, entity, object_uuid

SHARDS = 4  # fewer than the default 8: the assets must follow the count they were built with
DEFAULT_HOME = Path(tempfile.gettempdir()) / "tercul-test-home"


class PausingWeaviate(WeaviateResource):
    """The real Weaviate resource, whose batch sender freezes the server (SIGSTOP) at one chosen batch.

    ``send_objects`` is the resource's seam for how a batch goes out; this
    subclass is configured and built by Dagster like the real one, so the
    fault goes through the same step, processor and retries as production.
    """

    server_pid: int
    pause_at_batch: int = 2
    pause_before_send: bool = True  # False: that batch lands, then the server freezes
    resume_after_s: float | None = None  # None: frozen until the test sends SIGCONT

    _batches: int = PrivateAttr(default=0)

    def send_objects(
        self, client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
    ) -> dict[int, str]:
        self._batches += 1
        pause = self._batches == self.pause_at_batch
        if pause and self.pause_before_send:
            self._pause()
        refused = super().send_objects(client, collection, items)
        if pause and not self.pause_before_send:
            self._pause()
        return refused

    def _pause(self) -> None:
        os.kill(self.server_pid, signal.SIGSTOP)
        if self.resume_after_s is not None:
            threading.Timer(self.resume_after_s, os.kill, (self.server_pid, signal.SIGCONT)).start()


def weaviate_resource(server: LocalWeaviate, timeout: float = 120.0) -> WeaviateResource:
    return WeaviateResource(url=server.url, grpc_port=server.grpc_port, timeout_seconds=timeout)


def resources(
    db_url: str,
    server: LocalWeaviate,
    home: str | Path = DEFAULT_HOME,
    weaviate: WeaviateResource | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The three resources the assets use; ``weaviate`` replaces the plain Weaviate resource (faults).

    ``settings`` are ``SyncSettings`` fields; any other name raises (the resource would ignore it,
    and a test would believe it set, say, the vectorizer, which comes from the environment)."""
    unknown = sorted(set(settings) - set(SyncSettings.model_fields))
    if unknown:
        raise TypeError(f"SyncSettings has no field {unknown}: set those through the environment")
    return {
        "weaviate": weaviate or weaviate_resource(server),
        "tercul_db": TerculDatabase(url=db_url),
        "sync_settings": SyncSettings(home=str(home), **{"batch_size": 300, **settings}),
    }


def run_sync(
    db_url: str,
    server: LocalWeaviate,
    selection: list[str] | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
    partition_key: str | None = None,
    instance: dg.DagsterInstance | None = None,
    mode: str | None = None,
    retries: int | None = None,
    weaviate: WeaviateResource | None = None,
    **settings: Any,
) -> dg.ExecuteInProcessResult:
    """Materialize the real assets (all of them by default) over every shard.

    ``instance`` carries cursors from one run to the next; ``mode`` sets every selected asset's mode.
    """
    assets = (
        build_assets(SHARDS) if retries is None else build_assets(SHARDS, dg.RetryPolicy(max_retries=retries))
    )
    if mode is not None:
        names = selection or [a.key.to_user_string() for a in assets]
        run_config = {"ops": {n: {"config": {"mode": mode}} for n in names}}
    return dg.materialize(
        assets,
        selection=selection,
        instance=instance,
        resources=resources(db_url, server, weaviate=weaviate, **settings),
        run_config=run_config,
        tags=None if partition_key else all_shards_tags(SHARDS),
        partition_key=partition_key,
        raise_on_error=raise_on_error,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    mats = list(result.asset_materializations_for_node(asset))
    assert mats, f"no materialization of {asset}"
    return {k: getattr(v, "value", v) for k, v in mats[-1].metadata.items()}


def as_utc(value: datetime) -> datetime:
    """The contract's reading of a naive timestamp (the oracle keeps its own copy, not the engine's)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def expected_objects(engine: sa.Engine, e: EntityType) -> dict[int, dict[str, Any]]:
    """Straight from SQL: every live row's expected properties (NULLs absent)."""
    cols = [c.name for c in e.property_columns]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT id, {', '.join(cols)} FROM {e.table} WHERE deleted_at IS NULL")
        ).mappings()
        out = {}
        for row in rows:
            props = {"source_id": row["id"]}
            for c in cols:
                v = row[c]
                if isinstance(v, str) and c.endswith("_at"):  # SQLite returns raw text for timestamps
                    v = datetime.fromisoformat(v)
                if v is not None:
                    props[c] = as_utc(v) if isinstance(v, datetime) else v
            out[row["id"]] = props
        return out


def stored_objects(client: weaviate.WeaviateClient, e: EntityType) -> dict[str, dict[str, Any]]:
    """Every object of a collection: ``{uuid: properties without None and the bookkeeping ones}``."""
    out = {}
    for obj in client.collections.use(e.collection).iterator():
        props = {k: v for k, v in obj.properties.items() if v is not None and k not in BOOKKEEPING_PROPERTIES}
        out[str(obj.uuid)] = props
    return out


def expected_references(engine: sa.Engine) -> dict[tuple[str, str, int], set[int]]:
    """From SQL alone, live edges between live rows: ``{(source, property, source id): {target ids}}``."""
    out: dict[tuple[str, str, int], set[int]] = {}
    with engine.connect() as conn:
        for r in RELATIONS:
            s, t = entity(r.source), entity(r.target)
            q = sa.text(
                f"SELECT e.source_id, e.target_id FROM edges e "
                f"JOIN {s.table} s ON s.id = e.source_id AND s.deleted_at IS NULL "
                f"JOIN {t.table} t ON t.id = e.target_id AND t.deleted_at IS NULL "
                f"WHERE e.deleted_at IS NULL AND e.source_table = :st AND e.relation = :rel "
                f"AND e.target_table = :tt"
            )
            for sid, tid in conn.execute(q, {"st": s.table, "rel": r.name, "tt": t.table}):
                out.setdefault((r.source, r.name, sid), set()).add(tid)
    return out


def rest_objects(server: LocalWeaviate, collection: str) -> list[dict[str, Any]]:
    """Every object of a collection as REST stores it: references as raw beacons, dangling ones included."""
    out, after = [], None
    while True:
        params = {"class": collection, "limit": 1000, **({"after": after} if after else {})}
        page = httpx.get(f"{server.url}/v1/objects", params=params, timeout=60).json().get("objects") or []
        if not page:
            return out
        out.extend(page)
        after = page[-1]["id"]


def stored_references(server: LocalWeaviate) -> dict[tuple[str, str, int], list[int]]:
    """From Weaviate, the same shape as lists, so that a duplicate shows; a beacon to no object is -1."""
    ids_by_uuid = {}
    for e in ENTITIES:
        for obj in rest_objects(server, e.collection):
            ids_by_uuid[obj["id"]] = int(obj["properties"]["source_id"])
    out: dict[tuple[str, str, int], list[int]] = {}
    for e in ENTITIES:
        rels = [r for r in RELATIONS if r.source == e.collection]
        if not rels:
            continue
        for obj in rest_objects(server, e.collection):
            for r in rels:
                beacons = obj["properties"].get(r.name) or []
                if beacons:
                    key = (e.collection, r.name, int(obj["properties"]["source_id"]))
                    out[key] = [ids_by_uuid.get(b["beacon"].rsplit("/", 1)[-1], -1) for b in beacons]
    return out


def assert_references_match(engine: sa.Engine, server: LocalWeaviate) -> dict:
    expected = expected_references(engine)
    stored = stored_references(server)
    duplicates = {k: v for k, v in stored.items() if len(v) != len(set(v))}
    assert not duplicates, f"duplicate references: {list(duplicates.items())[:3]}"
    assert all(-1 not in v for v in stored.values()), "a reference points at no object"
    assert {k: set(v) for k, v in stored.items()} == expected
    return expected


def assert_objects_match(
    engine: sa.Engine, client: weaviate.WeaviateClient, entities: tuple[EntityType, ...] = ENTITIES
) -> None:
    """Every collection holds exactly the live rows, with exactly their properties."""
    for e in entities:
        expected = {object_uuid(e.collection, i): props for i, props in expected_objects(engine, e).items()}
        stored = stored_objects(client, e)
        assert set(stored) == set(expected), (
            f"{e.collection}: extra {len(set(stored) - set(expected))}, "
            f"missing {len(set(expected) - set(stored))}"
        )
        wrong = [u for u in expected if stored[u] != expected[u]]
        assert not wrong, (
            f"{e.collection}: {len(wrong)} objects differ, e.g. {stored[wrong[0]]} != {expected[wrong[0]]}"
        )
