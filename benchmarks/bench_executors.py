"""`dagster job execute -j full_sync` with each executor and Weaviate setup, side by side in one run.

    .venv/bin/python benchmarks/bench_executors.py [--rows 20000 | --db-url URL] [--runs first,rerun]
        [--configs multiprocess/single,in_process/single] [--out FILE] [--keep]

A configuration is ``executor/weaviate``: the executor is ``TERCUL_SYNC_EXECUTOR``
(``multiprocess``, ``in_process``, ``celery``), the Weaviate ``single`` (one local
server) or ``cluster`` (``weaviate_server.start_cluster``: three nodes on 127.0.0.11-13,
``TERCUL_SYNC_REPLICATION_FACTOR=3``, ``TERCUL_SYNC_WRITE_CONSISTENCY=QUORUM``, the run
talking to the first node, as tercul_sync_tests/test_cluster.py does). ``celery`` starts
Redis (scripts/redis-up) and two ``dagster-celery`` workers (concurrency 1 each, as
tercul_sync_tests/test_celery.py does) on a fresh Dagster storage database in PostgreSQL
(the repository's dagster.yaml), and stops them after the configuration's runs.

The data: ``--db-url`` (any SQLAlchemy URL, e.g. a ``tercul_bench_1000000`` made by
bench_peers.py), else a demo database generated here (SQLite, ``--rows``). Vectors off,
passages on, the job's parity checks included. Every configuration starts from an empty
Weaviate of its own and runs ``full_sync`` once per ``--runs`` (a first sync, then a re-run
with nothing changed). For each run: the wall time, when each step ran (the event log,
peers_dagster.py), the peak RSS summed over the run's process tree (and the Celery workers'
trees), the Weaviate peak RSS (summed over the nodes), the CPU other processes used meanwhile,
and a check that every entity collection holds exactly the live rows (through each node, for
the cluster). Machines are shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from peers_dagster import dagster_on_postgres, timeline
from peers_measure import MB, TreeSampler, cpu_by_process, other_cpu_seconds

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import PASSAGE_COLLECTION, sync_order

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
EXECUTORS = ("multiprocess", "in_process", "celery")
WEAVIATES = ("single", "cluster")
WORKERS = 2
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('TERCUL_REDIS_PORT', '6390')}/5"  # the benchmark's own db


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


Worker = tuple[subprocess.Popen[bytes], Path]  # a Celery worker and its log
REFUSED = "cannot reach enough replicas"  # a QUORUM write refused, retried as transient (docs/deployment.md)


@dataclass
class Result:
    """One ``full_sync`` run of one configuration."""

    config: str
    run: str
    seconds: float
    returncode: int
    run_rss: int  # peak RSS summed over the run's process tree and the Celery workers' trees
    processes: int
    weaviate_rss: int  # peak RSS summed over the Weaviate nodes
    other_cores: float = 0.0  # CPU seconds of other processes per wall second
    load1: float = 0.0  # the machine's 1-minute load average before the run
    check: str = ""
    tl: dict[str, Any] = field(default_factory=dict)


class Peaks(TreeSampler):
    """Peak RSS summed over several process trees, and, apart, over the Weaviate server processes."""

    def __init__(self, roots: Sequence[int], servers: Sequence[int]) -> None:
        super().__init__(roots[0])
        self.roots, self.servers = list(roots), list(servers)

    def sample(self, with_pss: bool = False) -> None:
        total = 0
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(root)
                for p in [parent, *parent.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                        self.processes_seen.add(p.pid)
        servers = 0
        for pid in self.servers:
            with contextlib.suppress(psutil.Error):
                servers += psutil.Process(pid).memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        self.server_peak_rss = max(self.server_peak_rss, servers)


def spawn(cmd: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """A process and its group: SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
            return


@contextlib.contextmanager
def weaviate(kind: str, data_dir: Path) -> Iterator[list[weaviate_server.LocalWeaviate]]:
    """An empty Weaviate: one server, or the three nodes of a cluster (the run talks to the first)."""
    if kind == "cluster":
        cluster = weaviate_server.start_cluster(data_dir)
        nodes = cluster.nodes
    else:
        nodes = [weaviate_server.start(data_dir)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def celery_workers(env: dict[str, str], work: Path, name: str) -> Iterator[list[Worker]]:
    """Redis (scripts/redis-up; our own database on it, emptied) and two ready workers, with their logs."""
    subprocess.run([str(ROOT / "scripts" / "redis-up")], check=True)
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = work / f"celery-{name}.yaml"
    config.write_text(
        subprocess.run(
            [str(BIN / "python"), "-m", "tercul_sync.defs.celery_worker"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
    logs = [work / f"celery-{name}-w{i + 1}.log" for i in range(WORKERS)]
    workers = [
        spawn([*cmd, "-n", f"bench-w{i + 1}", "--", "--concurrency=1"], env, log)
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.monotonic() + 180
        while not all(" ready." in log.read_text(errors="replace") for log in logs):
            for w, log in zip(workers, logs, strict=True):
                if w.poll() is not None:
                    sys.exit(f"celery worker exited:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                sys.exit(f"celery workers not ready within 180 s; see {logs}")
            time.sleep(0.5)
        yield list(zip(workers, logs, strict=True))
    finally:
        for w in workers:
            stop(w)


@contextlib.contextmanager
def dagster_storage(home: Path, executor: str) -> Iterator[dict[str, str]]:
    """The run's Dagster instance: SQLite under ``home``; for Celery, which shares it with the workers,
    the repository's dagster.yaml on a new PostgreSQL database, dropped afterwards."""
    home.mkdir(parents=True)
    if executor != "celery":
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        yield {}
        return
    subprocess.run([str(ROOT / "scripts" / "postgres-up")], check=True)
    with dagster_on_postgres(home, "tercul_bench_exec_dagster") as pg:
        yield pg


def refused_batches(logs: Sequence[Path]) -> int:
    """Batches the weaviate client logged as partly failed because a QUORUM could not be had."""
    return sum(
        sum(REFUSED in line for line in p.read_text(errors="replace").splitlines())
        for p in logs
        if p.exists()
    )


def live_rows(db_url: str) -> dict[str, int]:
    engine = reading.make_engine(db_url)
    try:
        return {e.collection: reading.count_live(engine, e) for e in sync_order()}
    finally:
        engine.dispose()


def count_problems(
    nodes: Sequence[weaviate_server.LocalWeaviate], live: dict[str, int]
) -> tuple[list[str], int]:
    """Entity collections whose objects, counted through each node, are not the live rows, and nodes that
    count other passages (waiting up to 60 s on a cluster, for replicas to settle); and the passages."""
    deadline = time.monotonic() + (60 if len(nodes) > 1 else 0)
    while True:
        problems, passages = [], set()
        for i, node in enumerate(nodes):
            client = wc.connect(node.url, node.grpc_port, None, timeout_s=300)
            try:
                for name, rows in live.items():
                    found = wc.count_objects(client, name)
                    if found != rows:
                        problems.append(f"{name} {found:,} objects, {rows:,} live rows (n{i + 1})")
                if client.collections.exists(PASSAGE_COLLECTION):  # not with TERCUL_SYNC_PASSAGES=false
                    passages.add(wc.count_objects(client, PASSAGE_COLLECTION))
            finally:
                client.close()
        if len(passages) > 1:
            problems.append(f"passages differ between nodes: {sorted(passages)}")
        if not problems or time.monotonic() > deadline:
            return problems, max(passages, default=0)
        time.sleep(5)


def run_config(config: str, args: argparse.Namespace, work: Path, live: dict[str, int]) -> list[Result]:
    executor, kind = config.split("/")
    name = config.replace("/", "-")
    home = work / f"dagster-{name}"
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        nodes = stack.enter_context(weaviate(kind, work / f"weaviate-{name}"))
        pg = stack.enter_context(dagster_storage(home, executor))
        env = {
            **os.environ,
            **pg,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the workers run `celery` from here
            "PYTHONWARNINGS": "ignore",
            "DAGSTER_HOME": str(home),
            "TERCUL_SYNC_HOME": str(work / f"home-{name}"),
            "TERCUL_DATABASE_URL": args.db_url,
            "WEAVIATE_URL": nodes[0].url,
            "WEAVIATE_GRPC_PORT": str(nodes[0].grpc_port),
            "TERCUL_SYNC_VECTORIZER": "none",
            "TERCUL_SYNC_EXECUTOR": executor,
            "TERCUL_SYNC_REPLICATION_FACTOR": str(len(nodes)),
            "TERCUL_SYNC_WRITE_CONSISTENCY": "QUORUM" if len(nodes) > 1 else "ONE",
            "TERCUL_SYNC_CELERY_BROKER": REDIS_URL,
            # Above any step's time, so that no slow step is handed to the second worker too.
            "TERCUL_SYNC_CELERY_VISIBILITY_TIMEOUT": "86400",
        }
        workers = stack.enter_context(celery_workers(env, work, name)) if executor == "celery" else []
        for run in args.runs.split(","):
            results.append(measure(config, run, env, home, nodes, workers, live, work / f"{name}-{run}.log"))
            if results[-1].returncode:
                break
    if not args.keep:
        shutil.rmtree(work / f"weaviate-{name}", ignore_errors=True)
    return results


def measure(
    config: str,
    run: str,
    env: dict[str, str],
    home: Path,
    nodes: Sequence[weaviate_server.LocalWeaviate],
    workers: Sequence[Worker],
    live: dict[str, int],
    log: Path,
) -> Result:
    say(f"{config}: full_sync, {run} (log {log})")
    load1 = os.getloadavg()[0]
    cpu_before = cpu_by_process()
    started_at, clock = time.time(), time.perf_counter()
    proc = spawn(
        [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "full_sync"], env, log
    )
    servers = [n.process.pid for n in nodes]
    logs = [log, *(w_log for _, w_log in workers)]
    refused_before = refused_batches(logs)
    with Peaks([proc.pid, *(w.pid for w, _ in workers)], servers) as peaks:
        rc = proc.wait()
    seconds = time.perf_counter() - clock
    redis_pids = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"}
    ours = {*peaks.processes_seen, *servers, *redis_pids, os.getpid()}
    other = other_cpu_seconds(cpu_before, cpu_by_process(), ours)
    r = Result(config, run, seconds, rc, peaks.peak_rss, len(peaks.processes_seen), peaks.server_peak_rss)
    r.other_cores, r.load1 = other / seconds, load1
    r.tl = timeline(home, started_at, seconds, {*live, "edges"})
    problems, passages = count_problems(nodes, live)
    nodes_text = f" on each of {len(nodes)} nodes" if len(nodes) > 1 else ""
    notes = ["; ".join(problems) or f"ok: objects = live rows{nodes_text}, {passages:,} passages"]
    if rc:
        notes.insert(0, f"FAILED (exit {rc}, log {log})")
        say(log.read_text(errors="replace")[-3000:])
    if r.tl["retries"]:
        notes.append(f"{r.tl['retries']} step retries")
    if refused := refused_batches(logs) - refused_before:
        notes.append(f"{refused} batches partly refused ({REFUSED}), retried")
    r.check = "; ".join(notes)
    say(
        f"{config} {run}: {seconds:.1f} s, run {r.run_rss / MB:.0f} MB over {r.processes} processes, "
        f"Weaviate {r.weaviate_rss / MB:.0f} MB, other processes {r.other_cores:.2f} cores; {r.check}"
    )
    print(steps_table([r]), flush=True)
    return r


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


SUMMARY: list[tuple[str, Callable[[Result], Any]]] = [
    ("configuration", lambda r: r.config),
    ("run", lambda r: r.run),
    ("wall s", lambda r: r.seconds),
    ("to RUN_START s", lambda r: r.tl.get("to_run_start_s")),
    ("to entities+edges done s", lambda r: r.tl.get("to_edges_done_s")),
    ("run peak RSS MB", lambda r: r.run_rss / MB),
    ("Weaviate peak RSS MB", lambda r: r.weaviate_rss / MB),
    ("other CPU, cores", lambda r: f"{r.other_cores:.2f}"),
    ("load1 before", lambda r: f"{r.load1:.2f}"),
    ("check", lambda r: r.check),
]


def summary_table(results: Sequence[Result]) -> str:
    return markdown([c[0] for c in SUMMARY], [[get(r) for _, get in SUMMARY] for r in results])


def steps_table(results: Sequence[Result]) -> str:
    """Seconds from STEP_START to its end, per step (rows) and run (columns); a * marks a retried step."""
    steps = list(dict.fromkeys(s["step"] for r in results for s in r.tl.get("steps", [])))
    by_run = [{s["step"]: s for s in r.tl.get("steps", [])} for r in results]

    def cell(s: dict[str, Any] | None) -> str:
        if s is None or s["step_s"] is None:
            return "" if s is None else s["outcome"] or "not ended"
        return (
            f"{s['step_s']:,.1f}"
            + ("*" if s["retries"] else "")
            + ("" if s["outcome"] == "success" else " failed")
        )

    header = ["step s", *(f"{r.config} {r.run}" for r in results)]
    return markdown(header, [[step, *(cell(b.get(step)) for b in by_run)] for step in steps])


def machine() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain", "tercul_sync", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    commit = git.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")
    memory = psutil.virtual_memory().total / 1024**3
    return f"{os.cpu_count()} cores, {memory:.0f} GB, Python {platform.python_version()}; commit {commit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rows", type=int, default=20_000, help="demo rows to generate (SQLite), without --db-url"
    )
    ap.add_argument("--db-url", help="an existing database to sync (SQLAlchemy URL); nothing is generated")
    ap.add_argument(
        "--configs", default="multiprocess/single,in_process/single", help="executor/weaviate, ..."
    )
    ap.add_argument("--runs", default="first,rerun", help="first, or first,rerun (a re-run, nothing changed)")
    ap.add_argument("--out", type=Path, help="write the tables (and the command, load and commit) here")
    ap.add_argument("--keep", action="store_true", help="keep each configuration's Weaviate data")
    args = ap.parse_args()
    configs = [c if "/" in c else f"{c}/single" for c in args.configs.split(",")]
    for c in configs:
        executor, _, kind = c.partition("/")
        if executor not in EXECUTORS or kind not in WEAVIATES:
            ap.error(f"configuration {c}: executor one of {EXECUTORS}, weaviate one of {WEAVIATES}")
    if args.runs.split(",")[0] != "first" or not set(args.runs.split(",")) <= {"first", "rerun"}:
        ap.error("--runs: first or first,rerun")
    os.environ.setdefault("TERCUL_SYNC_HOME", str(ROOT / ".tercul"))  # where the Weaviate binary is
    shown = [
        a.replace(args.db_url, reading.safe_url(args.db_url)) if args.db_url else a for a in sys.argv[1:]
    ]
    command = shlex.join([".venv/bin/python", "benchmarks/bench_executors.py", *shown])
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tercul-executors-"))
    say(f"work folder {work}")
    if not args.db_url:
        args.db_url = f"sqlite:///{work / 'tercul.db'}"
        demo_data.generate(reading.make_engine(args.db_url), args.rows, seed=1)
    live = live_rows(args.db_url)
    data = f"{reading.safe_url(args.db_url)}: {sum(live.values()):,} live rows"
    say(f"{data}; full_sync, no vectors, passages and parity checks included; {machine()}")
    results = [r for c in configs for r in run_config(c, args, work, live)]
    tables = (
        f"{summary_table(results)}\n\nSeconds of each step, STEP_START to its end (* retried):\n\n"
        f"{steps_table(results)}\n"
    )
    print("\n" + tables)
    if args.out:
        load_after = os.getloadavg()
        args.out.write_text(
            f"# full_sync by executor and Weaviate setup\n\n`{command}`\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M')}; {machine()}; {data}; "
            f"load average before {', '.join(f'{x:.2f}' for x in load_before)}, "
            f"after {', '.join(f'{x:.2f}' for x in load_after)}\n\n{tables}"
        )
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
