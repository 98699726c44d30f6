"""The in-process measurements of bench_peers.py, each run as its own child process.

    .venv/bin/python benchmarks/peers_phases.py limit  --db-url URL --weaviate-url URL --grpc-port N
    .venv/bin/python benchmarks/peers_phases.py engine --run first|rerun|incremental|full ...

A fresh process per measurement keeps each one's RSS high-water mark its own
(what is left on the heap by an earlier measurement does not count against a
later one), as it would be for a Dagster step. The seconds are timed here,
around the work only (imports and connecting are not counted); the last line
of output is the result as JSON, read by bench_peers.py.

``limit`` reads every live row, builds each object with
``tercul_sync.engine.objects.build_object`` and its reference lists (live edges
to live targets, the same as tercul_sync writes), holds them all in memory,
then times writing them with ``insert_many`` (one synchronous gRPC request per
batch) and, into an emptied Weaviate, with the client's ``batch.fixed_size``
batcher. ``engine`` runs ``runs.run_entity`` for every entity type in
``sync_order()`` over all 8 shards, then ``runs.run_edges``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from peers_measure import emit, reset_peak_rss, self_peak_rss
from weaviate.classes.data import DataObject

from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.objects import ObjectWrite, build_object
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.registry import RELATIONS, entity, object_uuid, sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

SHARD_COUNT = 8
SHARDS = {f"shard-{i}": reading.Shard(i, SHARD_COUNT) for i in range(SHARD_COUNT)}


def live_references(db: sa.Engine) -> dict[str, dict[int, dict[str, list[str]]]]:
    """``{collection: {row id: {reference name: [target uuid, ...]}}}`` from live edges to live targets."""
    out: dict[str, dict[int, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(dict))
    with db.connect() as conn:
        for r in RELATIONS:
            src, tgt = entity(r.source), entity(r.target)
            q = sa.text(
                f"SELECT e.source_id, e.target_id FROM edges e JOIN {tgt.table} t ON t.id = e.target_id "
                f"WHERE e.deleted_at IS NULL AND t.{tgt.soft_delete_column} IS NULL "
                "AND e.source_table = :s AND e.relation = :r AND e.target_table = :t"
            )
            for source_id, target_id in conn.execute(q, {"s": src.table, "r": r.name, "t": tgt.table}):
                refs = out[r.source][source_id].setdefault(r.name, [])
                refs.append(object_uuid(r.target, target_id))
    return out


def build_all(db: sa.Engine) -> tuple[dict[str, list[ObjectWrite]], dict[str, list[ObjectWrite]]]:
    """Every live row of every entity type as the object tercul_sync would write, in sync order.

    Weaviate refuses a reference to an object that does not exist yet, so an
    object referring to its own collection (Category.parent) is built twice:
    first without those references, then whole, to be written again once its
    whole collection exists (what tercul_sync's edges pass does). Returns
    ``(first pass, second pass)``.
    """
    refs = live_references(db)
    objects: dict[str, list[ObjectWrite]] = {}
    again: dict[str, list[ObjectWrite]] = {}
    with db.connect() as conn:
        for e in sync_order():
            t = reading.table_for(e)
            rows = conn.execute(
                sa.select(t).where(t.c[e.soft_delete_column].is_(None)).order_by(t.c.id)
            ).mappings()
            mine = refs.get(e.collection, {})
            own = {r.name for r in RELATIONS if r.source == e.collection and r.target == e.collection}
            objects[e.collection], again[e.collection] = [], []
            for row in rows:
                full = mine.get(row["id"], {})
                first = {k: v for k, v in full.items() if k not in own}
                objects[e.collection].append(build_object(e, row, first))
                if first != full:
                    again[e.collection].append(build_object(e, row, full))
    return objects, {c: v for c, v in again.items() if v}


def limit(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    db = reading.make_engine(args.db_url)
    t = time.perf_counter()
    objects, again = build_all(db)
    build_s = time.perf_counter() - t
    n = sum(len(v) for v in objects.values())
    final = {o.uuid: o for v in [*objects.values(), *again.values()] for o in v}
    refs = sum(o.properties["sync_ref_count"] for o in final.values())
    payload = sum(o.size for v in objects.values() for o in v)
    client = weaviate_client.connect(
        args.weaviate_url, args.grpc_port, None, settings.weaviate_timeout_seconds
    )
    result: dict[str, Any] = {
        "objects": n,
        "references": refs,
        "payload_mb": payload / 1e6,
        "build_seconds": build_s,
        "objects_by_collection": {c: len(v) for c, v in objects.items()},
        "written_again": sum(len(v) for v in again.values()),
    }

    def fresh() -> None:
        client.collections.delete_all()
        ensure_schema(client, settings)

    # 1. insert_many: one synchronous BatchObjects request per batch, as tercul_sync sends them.
    fresh()
    reset_peak_rss()
    failed = 0
    t = time.perf_counter()
    for collection, objs in [*objects.items(), *again.items()]:
        col = client.collections.use(collection)
        for i in range(0, len(objs), args.batch):
            batch = [
                DataObject(properties=o.properties, uuid=o.uuid, references=o.references or None)
                for o in objs[i : i + args.batch]
            ]
            failed += len(col.data.insert_many(batch).errors)
    result["insert_many"] = {
        "seconds": time.perf_counter() - t,
        "failed": failed,
        "peak_rss": self_peak_rss(),
        "count": sum(weaviate_client.count_objects(client, c) for c in objects),
    }

    # 2. The client's background batcher, two requests in flight.
    fresh()
    reset_peak_rss()
    failed = 0
    t = time.perf_counter()
    for collection, objs in [*objects.items(), *again.items()]:
        col = client.collections.use(collection)
        with col.batch.fixed_size(batch_size=args.batch, concurrent_requests=2) as batch:
            for o in objs:
                batch.add_object(properties=o.properties, uuid=o.uuid, references=o.references or None)
        failed += len(col.batch.failed_objects) + len(col.batch.failed_references)
    result["fixed_size"] = {
        "seconds": time.perf_counter() - t,
        "failed": failed,
        "peak_rss": self_peak_rss(),
        "count": sum(weaviate_client.count_objects(client, c) for c in objects),
    }
    client.close()
    return result


def _entity_row(name: str, seconds: float, run: runs.EntityRun) -> dict[str, Any]:
    r = run.report
    return {
        "step": name,
        "seconds": seconds,
        "rows_read": r.rows_read,
        "rows_changed": run.rows_changed,
        "written": r.write.written,
        "unchanged": r.unchanged,
        "failed": r.write.failed,
        "deleted": run.deleted,
        "swept": run.swept,
    }


def engine(args: argparse.Namespace) -> dict[str, Any]:
    """One engine run (``first`` / ``rerun`` / ``full`` in full mode, ``incremental`` from saved cursors).

    As in a Dagster step: the objects imported are frozen out of the cycle collector's walks (what
    loading the code location does), and an entity step trusts the targets written whole earlier in
    the run (``SyncContext.trusted``)."""
    try:
        from tercul_sync.garbage_collection import settle_imports
    except ImportError:  # --code older than the module
        pass
    else:
        settle_imports()
    settings = load_settings()
    db = reading.make_engine(args.db_url)
    client = weaviate_client.connect(
        args.weaviate_url, args.grpc_port, None, settings.weaviate_timeout_seconds
    )
    ctx = SyncContext(db, client, settings)
    cursor_file = Path(args.cursors)
    mode = runs.INCREMENTAL if args.run == "incremental" else runs.FULL
    previous: dict[str, Any] = json.loads(cursor_file.read_text()) if mode == runs.INCREMENTAL else {}
    if args.run == "first":
        client.collections.delete_all()  # not timed: the first sync starts from an empty Weaviate
    steps: list[dict[str, Any]] = []
    cursors: dict[str, Any] = {}
    removed: dict[str, list[int]] = {}  # what the Dagster edges step reads from the entity steps' metadata
    reset_peak_rss()
    started = time.perf_counter()
    t = time.perf_counter()
    ensure_schema(client, settings)
    steps.append({"step": "schema", "seconds": time.perf_counter() - t})
    whole: set[str] = set()  # types written whole earlier in this run, as the Dagster assets read them
    for e in sync_order():
        t = time.perf_counter()
        step_ctx = ctx
        if hasattr(ctx, "trusted") and mode == runs.FULL:  # --code older than 01c552f: no trusted targets
            targets = {r.target for r in RELATIONS if r.source == e.collection and r.target != e.collection}
            step_ctx = replace(ctx, trusted=frozenset(targets & whole))
        run = runs.run_entity(step_ctx, e, SHARDS, mode, previous.get(e.collection, {}))
        if run.report.write.failed == 0:
            whole.add(e.collection)
        steps.append(_entity_row(e.collection, time.perf_counter() - t, run))
        cursors[e.collection] = run.cursors
        # --code older than 78c55f0: no removed ids
        if len(getattr(run, "removed", ())) <= getattr(runs, "REMOVED_KEPT", -1):
            removed[e.collection] = run.removed
    t = time.perf_counter()
    edges = runs.run_edges(ctx, SHARDS, mode, previous.get("edges", {}), *([removed] if removed else []))
    steps.append(
        {
            "step": "edges",
            "seconds": time.perf_counter() - t,
            "rows_read": sum(r.rows_read for r in edges.reports),
            "rows_changed": edges.edges_changed,
            "written": sum(r.write.written for r in edges.reports),
            "unchanged": sum(r.unchanged for r in edges.reports),
            "failed": sum(r.write.failed for r in edges.reports),
            "reconciled": edges.reconciled,
            "sources_of_removed_targets": getattr(edges, "sources_of_removed", 0),
        }
    )
    cursors["edges"] = edges.cursors
    seconds = time.perf_counter() - started
    peak = self_peak_rss()
    cursor_file.write_text(json.dumps(cursors, default=str))
    counts = {e.collection: weaviate_client.count_objects(client, e.collection) for e in sync_order()}
    live = {e.collection: reading.count_live(db, e) for e in sync_order()}
    client.close()
    return {
        "run": args.run,
        "seconds": seconds,
        "peak_rss": peak,
        "steps": steps,
        "counts": counts,
        "live": live,
        "failed": sum(s.get("failed", 0) for s in steps),
    }


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """The parity check of every entity collection, as the ``parity`` job runs it (8 shards)."""
    settings = load_settings()
    db = reading.make_engine(args.db_url)
    client = weaviate_client.connect(
        args.weaviate_url, args.grpc_port, None, settings.weaviate_timeout_seconds
    )
    reset_peak_rss()
    started = time.perf_counter()
    reports = [check_parity(db, client, e, list(SHARDS.values()), settings) for e in sync_order()]
    seconds = time.perf_counter() - started
    client.close()
    return {
        "run": "parity",
        "seconds": seconds,
        "peak_rss": self_peak_rss(),
        "reports": [r.describe() for r in reports],
        "exact": all(r.exact for r in reports),
        "objects": sum(r.objects for r in reports),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["limit", "engine", "parity"])
    ap.add_argument("--run", choices=["first", "rerun", "incremental", "full"], default="first")
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--weaviate-url", required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--cursors", default="cursors.json", help="where engine runs keep their cursors")
    args = ap.parse_args()
    emit({"limit": limit, "engine": engine, "parity": parity}[args.phase](args))


if __name__ == "__main__":
    main()
