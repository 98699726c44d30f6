"""`dagster job execute -j full_sync` with each executor, side by side in one run.

    .venv/bin/python benchmarks/bench_executors.py [--rows 20000] [--executors multiprocess,in_process]

Builds one demo database (SQLite, no vectors, passages on) and, for each
executor (``TERCUL_SYNC_EXECUTOR``), starts an empty local Weaviate and runs
``full_sync`` twice (a first sync, then a re-run with nothing changed),
printing the wall time and, from the run's event log, when each step ran.
Machines are shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peers_dagster import timeline

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = ROOT / ".venv" / "bin" / "dagster"


def run_twice(executor: str, db_url: str, work: Path) -> list[tuple[str, float, dict]]:
    server = weaviate_server.start(work / f"weaviate-{executor}")
    home = work / f"dagster-{executor}"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TERCUL_SYNC_HOME": str(work / f"home-{executor}"),
        "TERCUL_DATABASE_URL": db_url,
        "WEAVIATE_URL": server.url,
        "WEAVIATE_GRPC_PORT": str(server.grpc_port),
        "TERCUL_SYNC_VECTORIZER": "none",
        "TERCUL_SYNC_EXECUTOR": executor,
    }
    out = []
    try:
        for run in ("first", "rerun"):
            started_at, clock = time.time(), time.perf_counter()
            cmd = [str(DAGSTER), "job", "execute", "-m", "tercul_sync.definitions", "-j", "full_sync"]
            done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - clock
            if done.returncode:
                sys.exit(f"{executor} {run} failed:\n{done.stderr[-3000:]}")
            out.append((run, seconds, timeline(home, started_at, seconds, set())))
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--executors", default="multiprocess,in_process")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tercul-executors-"))
    db_url = f"sqlite:///{work / 'tercul.db'}"
    demo_data.generate(reading.make_engine(db_url), args.rows, seed=1)
    print(f"demo rows {args.rows:,}; full_sync, no vectors, passages and parity checks included")
    print(f"{'executor':<14} {'run':<6} {'seconds':>8} {'to RUN_START':>13} {'sum of steps':>13}")
    for executor in args.executors.split(","):
        for run, seconds, tl in run_twice(executor, db_url, work):
            print(
                f"{executor:<14} {run:<6} {seconds:>8.1f} {tl['to_run_start_s'] or 0:>13.1f}"
                f" {tl['step_s_total']:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
