"""Write throughput, side by side in one run, on this machine's real Weaviate.

    .venv/bin/python benchmarks/bench_write.py [--rows 20000] [--batch 500]

Starts a local Weaviate (or uses WEAVIATE_URL/WEAVIATE_GRPC_PORT), builds a
demo Tercul database in SQLite, and times, on the same rows:

1. tercul_sync's ObjectSyncer: keyset read, hash check, batch upsert through
   the batch processor (the path every asset uses);
2. the same again, nothing changed: the cost of a re-run;
3. the batch processor alone on prebuilt objects (write only);
4. weaviate-client's background batcher (``batch.fixed_size``), the usual
   way tools write, fed the same objects;
5. one object per request (``data.insert``), as slow peers do, on a sample.

Figures are objects per second and ratios to (1). Shared machines are
noisy: compare within one run, not across runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading, weaviate_client
from tercul_sync.engine.batching import BatchProcessor
from tercul_sync.engine.objects import build_object, chunk
from tercul_sync.engine.registry import entity
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import ObjectSyncer, SyncContext


def _fresh(client, names=("Author", "Work")) -> None:
    for n in names:
        client.collections.delete(n)
    ensure_schema(client)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000, help="demo rows in all (about 30%% are Works)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--single-sample", type=int, default=1_000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tercul-bench-"))
    with weaviate_server.configured_or_local(tmp / "weaviate") as (url, grpc):
        engine = reading.make_engine(f"sqlite:///{tmp / 'tercul.db'}")
        demo_data.generate(engine, args.rows, seed=1)
        work = entity("Work")
        settings = load_settings(batch_size=args.batch)
        client = weaviate_client.connect(url, grpc, None, settings.weaviate_timeout_seconds)
        ctx = SyncContext(engine, client, settings)
        _fresh(client, ("Author", "Work", "Tag", "Category", "Translation", "Book", "Publisher"))
        # Targets first, so Work objects carry their references as they would in a full sync.
        for name in ("Author", "Tag", "Category"):
            ObjectSyncer(ctx, entity(name)).sync_shards([reading.Shard(0, 1)])

        t = time.perf_counter()
        report = ObjectSyncer(ctx, work).sync_shards([reading.Shard(0, 1)])
        ours = time.perf_counter() - t
        n = report.write.written
        assert report.write.failed == 0 and weaviate_client.count_objects(client, "Work") == n

        t = time.perf_counter()
        rerun = ObjectSyncer(ctx, work).sync_shards([reading.Shard(0, 1)])
        again = time.perf_counter() - t
        assert rerun.unchanged == n and rerun.write.written == 0

        pages = reading.iter_live_pages(engine, work, [reading.Shard(0, 1)], 10_000)
        rows = [r for page in pages for r in page]
        objects = [build_object(work, r) for r in rows]
        client.collections.delete("Work")
        ensure_schema(client)
        processor = BatchProcessor(
            lambda items: weaviate_client.send_objects(client, "Work", items),
            key_of=lambda o: o.row_id,
            retry=settings.retry,
        )
        t = time.perf_counter()
        for batch in chunk(objects, args.batch, settings.max_batch_bytes, lambda o: o.size):
            processor.write_batch(batch)
        ours_write = time.perf_counter() - t
        assert processor.report.failed == 0

        client.collections.delete("Work")
        ensure_schema(client)
        col = client.collections.use("Work")
        t = time.perf_counter()
        with col.batch.fixed_size(batch_size=args.batch, concurrent_requests=2) as batch:
            for o in objects:
                batch.add_object(properties=o.properties, uuid=o.uuid)
        background = time.perf_counter() - t
        failed_bg = len(col.batch.failed_objects)

        client.collections.delete("Work")
        ensure_schema(client)
        sample = objects[: args.single_sample]
        t = time.perf_counter()
        for o in sample:
            col.data.insert(properties=o.properties, uuid=o.uuid)
        single = (time.perf_counter() - t) * len(objects) / len(sample)
        client.close()

        mb = sum(o.size for o in objects) / 1e6
        print(
            f"Work objects: {n:,} (about {mb:.0f} MB of request payload), "
            f"batch size {args.batch}, Weaviate {url}"
        )
        print(f"{'path':<52} {'seconds':>8} {'objects/s':>10} {'vs ours':>8}")
        for label, secs in (
            ("tercul_sync ObjectSyncer (read+hash+write)", ours),
            ("tercul_sync re-run, nothing changed", again),
            ("tercul_sync batch processor (write only)", ours_write),
            (
                "weaviate-client batch.fixed_size (write only)"
                + (f" FAILED {failed_bg}" if failed_bg else ""),
                background,
            ),
            (f"one request per object (from {len(sample):,}, scaled)", single),
        ):
            print(f"{label:<52} {secs:>8.2f} {n / secs:>10,.0f} {secs / ours:>7.2f}x")


if __name__ == "__main__":
    main()
