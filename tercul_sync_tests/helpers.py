"""Running the real assets in process, and reading the truth back from SQL and Weaviate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import httpx
import sqlalchemy as sa
import weaviate
from tercul_sync.assets import build_assets, shard_keys
from tercul_sync.objects import BOOKKEEPING_PROPERTIES
from tercul_sync.registry import ENTITIES, RELATIONS, EntityType, entity, object_uuid
from tercul_sync.resources import SyncSettings, TerculDatabase, WeaviateResource
from tercul_sync.weaviate_server import LocalWeaviate

SHARDS = 4


def all_shards_tags(shards: int = SHARDS) -> dict[str, str]:
    keys = shard_keys(shards)
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def resources(
    db_url: str,
    server: LocalWeaviate,
    tmp_dir: str = "/tmp/tercul-test-reports",
    weaviate_timeout: float = 120.0,
    **settings: Any,
) -> dict[str, Any]:
    return {
        "weaviate": WeaviateResource(
            url=server.url, grpc_port=server.grpc_port, timeout_seconds=weaviate_timeout
        ),
        "tercul_db": TerculDatabase(url=db_url),
        "sync_settings": SyncSettings(report_dir=tmp_dir, **{"batch_size": 300, **settings}),
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
        resources=resources(db_url, server, **settings),
        run_config=run_config,
        tags=None if partition_key else all_shards_tags(),
        partition_key=partition_key,
        raise_on_error=raise_on_error,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    mats = [m for m in result.asset_materializations_for_node(asset)]
    assert mats, f"no materialization of {asset}"
    return {k: getattr(v, "value", v) for k, v in mats[-1].metadata.items()}


def as_utc(value: datetime) -> datetime:
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
    """Every object of a collection: ``{uuid: properties without None and the sync hash}``."""
    out = {}
    for obj in client.collections.use(e.collection).iterator():
        props = {k: v for k, v in obj.properties.items() if v is not None and k not in BOOKKEEPING_PROPERTIES}
        out[str(obj.uuid)] = props
    return out


def expected_references(engine: sa.Engine) -> dict[tuple[str, str, int], set[int]]:
    """From SQL alone: ``{(source collection, property, source id): {target ids}}`` for live edges between live rows."""
    out: dict[tuple[str, str, int], set[int]] = {}
    with engine.connect() as conn:
        for r in RELATIONS:
            s, t = entity(r.source), entity(r.target)
            q = sa.text(
                f"SELECT e.source_id, e.target_id FROM edges e "
                f"JOIN {s.table} s ON s.id = e.source_id AND s.deleted_at IS NULL "
                f"JOIN {t.table} t ON t.id = e.target_id AND t.deleted_at IS NULL "
                f"WHERE e.deleted_at IS NULL AND e.source_table = :st AND e.relation = :rel AND e.target_table = :tt"
            )
            for sid, tid in conn.execute(q, {"st": s.table, "rel": r.name, "tt": t.table}):
                out.setdefault((r.source, r.name, sid), set()).add(tid)
    return out


def rest_objects(server: LocalWeaviate, collection: str) -> list[dict[str, Any]]:
    """Every object of a collection as the REST API stores it: references as raw beacons, dangling ones included."""
    out, after = [], None
    while True:
        params = {"class": collection, "limit": 1000, **({"after": after} if after else {})}
        page = httpx.get(f"{server.url}/v1/objects", params=params, timeout=60).json().get("objects") or []
        if not page:
            return out
        out.extend(page)
        after = page[-1]["id"]


def stored_references(server: LocalWeaviate) -> dict[tuple[str, str, int], list[int]]:
    """From Weaviate: the same shape, as lists so that a duplicate reference shows; a beacon to no object is -1."""
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


def assert_objects_match(engine: sa.Engine, client: weaviate.WeaviateClient) -> None:
    """Every collection holds exactly the live rows, with exactly their properties."""
    for e in ENTITIES:
        expected = {object_uuid(e.collection, i): props for i, props in expected_objects(engine, e).items()}
        stored = stored_objects(client, e)
        assert set(stored) == set(expected), (
            f"{e.collection}: extra {len(set(stored) - set(expected))}, missing {len(set(expected) - set(stored))}"
        )
        wrong = [u for u in expected if stored[u] != expected[u]]
        assert not wrong, (
            f"{e.collection}: {len(wrong)} objects differ, e.g. {stored[wrong[0]]} != {expected[wrong[0]]}"
        )
