"""Full sync against incremental sync, side by side in one run, on a real Weaviate.

    .venv/bin/python benchmarks/bench_runs.py [--rows 50000] [--changed 0.01]

Builds a demo database in SQLite, runs a full sync of Work (every shard),
changes a share of the rows (updates, soft deletes, hard deletes), then
times an incremental run and a second full run over the same data. Prints
seconds, rows read and objects written for each, and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.registry import entity
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

SHARDS = {f"shard-{i}": reading.Shard(i, 8) for i in range(8)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--changed", type=float, default=0.01, help="share of Work rows changed between the runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tercul-bench-"))
    with weaviate_server.configured_or_local(tmp / "weaviate") as (url, grpc):
        engine = reading.make_engine(f"sqlite:///{tmp / 'tercul.db'}")
        demo_data.generate(engine, args.rows, seed=1)
        settings = load_settings()
        client = weaviate_client.connect(url, grpc, None, settings.weaviate_timeout_seconds)
        client.collections.delete_all()
        ensure_schema(client)
        ctx = SyncContext(engine, client, settings)
        work = entity("Work")
        for name in ("Author", "Tag", "Category"):
            runs.run_entity(ctx, entity(name), SHARDS, runs.FULL, {})

        def timed(mode: str, cursors: dict) -> tuple[float, runs.EntityRun]:
            t = time.perf_counter()
            run = runs.run_entity(ctx, work, SHARDS, mode, cursors)
            return time.perf_counter() - t, run

        first_s, first = timed(runs.FULL, {})
        cursors = first.cursors
        with engine.begin() as conn:
            ids = list(
                conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id")).scalars()
            )
            step = max(1, int(1 / args.changed))
            picked = ids[::step]
            for n, row_id in enumerate(picked):
                if n % 10 == 0:
                    conn.execute(sa.text("DELETE FROM works WHERE id = :i"), {"i": row_id})
                elif n % 10 == 1:
                    conn.execute(
                        sa.text("UPDATE works SET deleted_at = CURRENT_TIMESTAMP WHERE id = :i"),
                        {"i": row_id},
                    )
                else:
                    conn.execute(
                        sa.text(
                            "UPDATE works SET title = title || ' *', updated_at = CURRENT_TIMESTAMP "
                            "WHERE id = :i"
                        ),
                        {"i": row_id},
                    )
        inc_s, inc = timed(runs.INCREMENTAL, cursors)
        live = reading.count_live(engine, work)
        assert weaviate_client.count_objects(client, "Work") == live
        full_s, full = timed(runs.FULL, {})
        client.close()

        print(
            f"Work rows: {len(ids):,} live before; {len(picked):,} changed "
            f"({args.changed:.1%}: updates, soft and hard deletes)"
        )
        print(f"{'run':<34} {'seconds':>8} {'rows read':>10} {'written':>8} {'deleted':>8} {'vs full':>8}")
        for label, secs, run in (
            ("first full sync", first_s, first),
            ("incremental after the changes", inc_s, inc),
            ("full sync after the changes", full_s, full),
        ):
            r = run.report
            print(
                f"{label:<34} {secs:>8.2f} {r.rows_read:>10,} {r.write.written:>8,} "
                f"{run.deleted:>8,} {secs / full_s:>7.2f}x"
            )


if __name__ == "__main__":
    main()
