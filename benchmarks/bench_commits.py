"""Two commits of the engine, back to back: where a change's seconds and CPU went.

    .venv/bin/python benchmarks/bench_commits.py --db-url URL OLD NEW [--repeat 2]

Each run is a child process on one commit's tercul_sync (extracted with ``git
archive``, as ``bench_peers.py --code`` does) with a fresh Weaviate of its
own: the schema, every entity type over 8 shards, the edges, then the
passages, all first syncs, no vectors. It prints, for each phase, the wall
seconds and the CPU seconds of Python (this child), of Weaviate (from
``/proc/<pid>/stat``) and of PostgreSQL when it runs on this machine (every
``postgres`` process, ended backends included): on two busy cores, CPU saved
on any side is what shortens a run. The commits alternate (OLD, NEW, OLD, NEW, ...) so that a
machine getting slower or faster during the run weighs on both alike.
The database is any tercul database, e.g. ``tercul_bench_100000`` that
``bench_peers.py --rows 100000`` leaves behind.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

from peers_measure import code_snapshot

ROOT = Path(__file__).resolve().parent.parent
RESULT = "BENCH-COMMIT "

CHILD = r"""
import json, os, shutil, sys, tempfile, time
from pathlib import Path
from tercul_sync.devtools import weaviate_server
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.registry import sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

shards = {f"shard-{i}": reading.Shard(i, 8) for i in range(8)}
folder = Path(tempfile.mkdtemp(prefix="tercul-commits-"))
server = weaviate_server.start(folder / "data", log_file=folder / "weaviate.log")

def weaviate_cpu():
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def python_cpu():
    t = os.times()
    return t.user + t.system

def database_cpu():
    # every process named postgres: live backends by their own times, ended ones by the postmaster's
    # (it reaps them); 0 when the database is not a PostgreSQL server on this machine
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
            fields = text.rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")

def phase(name, work, out):
    wall, wv, py, db = time.perf_counter(), weaviate_cpu(), python_cpu(), database_cpu()
    work()
    out[name] = {"wall": time.perf_counter() - wall, "python_cpu": python_cpu() - py,
                 "weaviate_cpu": weaviate_cpu() - wv, "database_cpu": database_cpu() - db}

out = {}
try:
    settings = load_settings({"TERCUL_SYNC_VECTORIZER": "none"})
    ctx = SyncContext(reading.make_engine(sys.argv[1]),
                      weaviate_client.connect(server.url, server.grpc_port, None, 60), settings)
    phase("schema", lambda: ensure_schema(ctx.client, settings), out)
    phase("entities", lambda: [runs.run_entity(ctx, e, shards, runs.FULL, {}) for e in sync_order()], out)
    phase("edges", lambda: runs.run_edges(ctx, shards, runs.FULL, {}), out)
    phase("passages", lambda: runs.run_passages(ctx, shards, runs.FULL, {}), out)
    ctx.client.close()
finally:
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
import tercul_sync
print("BENCH-COMMIT " + json.dumps({"code": tercul_sync.__file__, "phases": out}))
"""


def run_once(code: Path, db_url: str) -> dict[str, dict[str, float]]:
    # The local state (the Weaviate binary) stays the repository's: the child runs elsewhere.
    home = str(Path(os.environ.get("TERCUL_SYNC_HOME", ROOT / ".tercul")).resolve())
    env = {**os.environ, "PYTHONPATH": str(code), "TERCUL_SYNC_VECTORIZER": "none", "TERCUL_SYNC_HOME": home}
    # `python -c` puts its working folder first on sys.path: the child runs in the snapshot, or the
    # work tree's package is imported whatever PYTHONPATH says (as it was for both commits until
    # this was found: every comparison made with this script before then ran one code twice).
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, db_url], env=env, capture_output=True, text=True, cwd=code
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run on {code} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1].removeprefix(RESULT))
    if not Path(result["code"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the run meant for {code} imported {result['code']}")
    return result["phases"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", help="a commit (the baseline)")
    ap.add_argument("new", help="a commit (the change)")
    ap.add_argument("--db-url", required=True, help="SQLAlchemy URL of a tercul database")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each commit, alternating")
    args = ap.parse_args()
    commits = [code_snapshot(rev, ROOT) for rev in (args.old, args.new)]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {sha: [] for sha, _ in commits}
    for i in range(args.repeat):
        for sha, code in commits:
            result = run_once(code, args.db_url)
            runs[sha].append(result)
            figures = ", ".join(f"{k} {v['wall']:.1f} s" for k, v in result.items())
            print(f"[{i + 1}/{args.repeat}] {sha}: {figures}", flush=True)
    header = ("wall, s", "Python CPU-s", "Weaviate CPU-s", "PostgreSQL CPU-s")
    print(f"\n{'phase':<10} {'commit':<9} " + " ".join(f"{h:>18}" for h in header))
    for name in runs[commits[0][0]][0]:
        for sha, _ in commits:
            cells = []
            for key in ("wall", "python_cpu", "weaviate_cpu", "database_cpu"):
                values = [r[name].get(key, 0.0) for r in runs[sha]]
                cells.append(f"{mean(values):6.1f} ({' / '.join(f'{v:.1f}' for v in values)})")
            print(f"{name:<10} {sha:<9} " + " ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
