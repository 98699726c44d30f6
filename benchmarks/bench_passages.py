"""Passages per second, with vectors from the local model, beside the full sync of the same rows.

    .venv/bin/python benchmarks/bench_passages.py [--rows 1000] [--vectorizer client]

Builds a demo database, syncs every entity type (no vectors) and times it,
then times the passages step over the same rows, first sync and re-run.
Machines are shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.registry import sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema, resolve
from tercul_sync.engine.writing import SyncContext

SHARDS = {f"shard-{i}": reading.Shard(i, 4) for i in range(4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000)
    ap.add_argument("--vectorizer", default="client", choices=["client", "none"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tercul-bench-"))
    with weaviate_server.configured_or_local(tmp / "weaviate") as (url, grpc):
        engine = reading.make_engine(f"sqlite:///{tmp / 'tercul.db'}")
        demo_data.generate(engine, args.rows, seed=1)
        plain = load_settings(vectorizer="none")
        client = weaviate_client.connect(url, grpc, None, plain.weaviate_timeout_seconds)
        client.collections.delete_all()
        ensure_schema(client, plain)
        ctx = SyncContext(engine, client, plain)
        started = time.perf_counter()
        objects = sum(runs.run_entity(ctx, e, SHARDS, runs.FULL, {}).report.rows_read for e in sync_order())
        entities_s = time.perf_counter() - started

        settings = load_settings(vectorizer=args.vectorizer)
        client.collections.delete(resolve(client, "Passage") or "Passage")
        client.alias.delete(alias_name="Passage")
        ensure_schema(client, settings, entities=[], relations=[])  # the Passage collection alone
        rows = []
        for label in ("passages, first", "passages, re-run"):
            started = time.perf_counter()
            report, _ = runs.run_passages(SyncContext(engine, client, settings), SHARDS, runs.FULL, {})
            rows.append((label, time.perf_counter() - started, report))
        client.close()
    print(f"demo rows {args.rows:,}; passages' vectors: {args.vectorizer}")
    print(f"{'run':<28} {'seconds':>8} {'items':>8} {'per s':>8} {'embedded':>9} {'parents skipped':>16}")
    print(
        f"{'entities, no vectors':<28} {entities_s:>8.1f} {objects:>8,} {objects / entities_s:>8.0f} {0:>9}"
    )
    for label, secs, report in rows:
        rate = report.passages / secs if secs else 0.0
        print(
            f"{label:<28} {secs:>8.1f} {report.passages:>8,} {rate:>8.0f} {report.embeddings.texts:>9,}"
            f" {report.parents_unchanged:>16,}"
        )


if __name__ == "__main__":
    main()
