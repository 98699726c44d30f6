"""The parity checks by a walk against by digests first, on one loaded Weaviate, alternating.

    .venv/bin/python benchmarks/bench_parity.py --db-url URL [--repeat 2] [--no-passages]

Syncs the database's rows (every entity type, the edges, the passages; no vectors) into a new
local Weaviate with the engine, then times, ``--repeat`` times, each way in turn: every entity
collection (two checks at a time), ``Passage``, and all of them as the ``parity_checks`` step runs
them (two at a time, the passages first). Each line gives the wall seconds, this process's CPU
seconds (Python) and Weaviate's (from ``/proc``), and how each report was built. Every check must
come out exact: the data was just synced. Machines are shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tercul_sync.devtools import weaviate_server
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.parity import ParityReport, check_parity, check_passage_parity
from tercul_sync.engine.registry import sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

SHARDS = [reading.Shard(i, 8) for i in range(8)]


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-passages", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tercul-bench-parity-"))
    server = weaviate_server.start(tmp / "weaviate", log_file=tmp / "weaviate.log")
    try:
        settings = load_settings(vectorizer="none", passages=not args.no_passages)
        db = reading.make_engine(args.db_url)
        client = weaviate_client.connect(
            server.url, server.grpc_port, None, settings.weaviate_timeout_seconds
        )
        ctx = SyncContext(db, client, settings)
        ensure_schema(client, settings)
        started = time.perf_counter()
        by_key = {f"shard-{s.index}": s for s in SHARDS}
        for e in sync_order():
            runs.run_entity(ctx, e, by_key, runs.FULL, {})
        runs.run_edges(ctx, by_key, runs.FULL, {})
        if settings.passages:
            runs.run_passages(ctx, by_key, runs.FULL, {})
        print(f"synced in {time.perf_counter() - started:.1f} s", flush=True)

        def entities(walk: bool) -> list[ParityReport]:
            with ThreadPoolExecutor(2) as pool:
                return list(
                    pool.map(lambda e: check_parity(db, client, e, SHARDS, settings, walk=walk), sync_order())
                )

        def passages(walk: bool) -> list[ParityReport]:
            return [check_passage_parity(db, client, SHARDS, settings, walk=walk)]

        def step(walk: bool) -> list[ParityReport]:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(passages, walk)
                rest = [
                    pool.submit(check_parity, db, client, e, SHARDS, settings, None, walk)
                    for e in sync_order()
                ]
                return first.result() + [f.result() for f in rest]

        kinds: list[tuple[str, Callable[[bool], list[ParityReport]]]] = [("entities", entities)]
        if settings.passages:
            kinds += [("passages", passages), ("step", step)]
        for _ in range(args.repeat):
            for name, run in kinds:
                for walk in (True, False):
                    weaviate0, python0, wall0 = _cpu_of(server.process.pid), _own_cpu(), time.perf_counter()
                    reports = run(walk)
                    wall = time.perf_counter() - wall0
                    inexact = [r.describe() for r in reports if not r.exact]
                    assert not inexact, inexact
                    methods = sorted({r.method for r in reports})
                    python = _own_cpu() - python0
                    weaviate = _cpu_of(server.process.pid) - weaviate0
                    print(
                        f"{name:9s} {'walk' if walk else 'digests':8s} {wall:6.2f} s, Python {python:6.2f} "
                        f"CPU-s, Weaviate {weaviate:6.2f} CPU-s, {sum(r.objects for r in reports):,} "
                        f"objects, method {'/'.join(methods)}",
                        flush=True,
                    )
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
