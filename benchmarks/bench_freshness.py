"""How fresh the change sensor keeps Weaviate, how idle it stays, and where a small run's time goes.

Everything real: PostgreSQL (``scripts/postgres-up``) holds a demo Tercul
database and Dagster's own storage; ``dagster-webserver`` and
``dagster-daemon`` run with the repository's ``dagster.yaml``
(``tercul_sync.devtools.dagster_deployment``); Weaviate is a local server
(``tercul_sync.devtools.weaviate_server``). Vectors are off
(``TERCUL_SYNC_VECTORIZER=none``): this is about triggers, not embedding.

Three measurements, each optional:

* freshness (``--updates N``, per ``--configs``): N updates to Work rows, one at
  a time, each committed after a random pause so that they fall at every phase
  of the sensor's checks; for each, the seconds from the commit returning to
  the new title being readable in Weaviate (its object fetched by its
  deterministic UUID every 0.2 s). p50, p95 and max per configuration.
* runs (``--run-samples K``): K small runs launched directly (no sensor), of
  the job the sensor launches and of ``incremental_sync`` with the same
  selection, after one changed row each; each run's time split by Dagster's
  event log (queued, launched, process up, steps, end).
* idle (``--idle-seconds S``): a deployment with default settings left alone
  for S seconds; the runs launched in that time by trigger, the sensor's ticks
  (evaluated, skipped, with runs), and the CPU seconds the webserver and
  daemon used.

    .venv/bin/python benchmarks/bench_freshness.py --rows 2000 --updates 20 --run-samples 5 \
        --out docs/triggers.md
    nohup .venv/bin/python benchmarks/bench_freshness.py --updates 0 --idle-seconds 3600 \
        --json /tmp/idle.json > /tmp/bench_idle.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import sqlalchemy as sa

from tercul_sync.devtools import dagster_deployment, demo_data, weaviate_server
from tercul_sync.devtools.dagster_deployment import DagsterDeployment, PostgresStorage
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import object_uuid
from tercul_sync.engine.settings import load_settings
from tercul_sync.trigger import SyncTrigger, enqueue_full_sync

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("TERCUL_PG_USER", "tercul"), os.environ.get("TERCUL_PG_PASSWORD", "tercul")
PG_PORT = int(os.environ.get("TERCUL_PG_PORT", "5432"))
NEVER = "0 0 1 1 *"  # once a year: the schedules kept out of a freshness measurement

SENSOR_TICKS = """
query ($selector: SensorSelector!, $after: Float) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { minIntervalSeconds sensorState { ticks(afterTimestamp: $after, limit: 100000) {
    status timestamp skipReason runIds } } } } }
"""


@dataclass(frozen=True)
class Config:
    """One deployment's settings: tercul_sync's environment and the instance's overrides."""

    name: str
    sensor_interval: int | None  # None: the default (30 s)
    instance: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        interval = f"sensor every {self.sensor_interval or 30} s"
        dequeue = self.instance.get("run_coordinator", {}).get("config", {}).get("dequeue_interval_seconds")
        return interval + (f", run queue checked every {dequeue} s" if dequeue else "")


CONFIGS = {
    "default": Config("default", None),
    # The sensor daemon wakes every 5 s whatever the interval (Dagster's loop), so 5 s is the floor;
    # the queued run coordinator dequeues every 5 s by default, 1 s here.
    "tuned": Config(
        "tuned",
        5,
        {
            "run_coordinator": {
                "module": "dagster.core.run_coordinator",
                "class": "QueuedRunCoordinator",
                "config": {"dequeue_interval_seconds": 1},
            }
        },
    ),
}


def pg_url(db: str) -> str:
    return f"postgresql+psycopg2://{PG[0]}:{PG[1]}@127.0.0.1:{PG_PORT}/{db}"


@contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url("tercul_test"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def deployment(
    work: Path, config: Config, source_url: str, server: weaviate_server.LocalWeaviate, schedules: bool
) -> Iterator[DagsterDeployment]:
    """Webserver and daemon with ``config``, on a Dagster database of their own."""
    settings = {
        "TERCUL_DATABASE_URL": source_url,
        "TERCUL_SYNC_HOME": str(work / "home"),
        "TERCUL_SYNC_VECTORIZER": "none",
        "WEAVIATE_URL": server.url,
        "WEAVIATE_GRPC_PORT": str(server.grpc_port),
    }
    if config.sensor_interval is not None:
        settings["TERCUL_SYNC_SENSOR_INTERVAL"] = str(config.sensor_interval)
    if not schedules:
        for cron in ("FULL_CRON", "INCREMENTAL_CRON", "SWEEP_CRON", "PARITY_CRON"):
            settings[f"TERCUL_SYNC_{cron}"] = NEVER
    with database("dagster_bench") as db:
        storage = PostgresStorage(db, PG[0], PG[1], port=PG_PORT)
        # This process reads the same instance (run records, event logs) as the daemon.
        os.environ.update(storage.env())
        dep = dagster_deployment.start(work / f"dagster_{config.name}", storage, settings, config.instance)
        try:
            yield dep
        finally:
            dep.stop()


def instance_of(dep: DagsterDeployment) -> Any:
    import dagster as dg

    return dg.DagsterInstance.from_config(str(dep.home))


def trigger_of(dep: DagsterDeployment) -> SyncTrigger:
    return SyncTrigger(load_settings({"TERCUL_SYNC_DAGSTER_URL": dep.url}))


def sensor_ticks(dep: DagsterDeployment, after: float) -> list[dict[str, Any]]:
    selector = {
        "repositoryLocationName": "tercul_sync",
        "repositoryName": "__repository__",
        "sensorName": "tercul_changes",
    }
    data = dep.graphql(SENSOR_TICKS, {"selector": selector, "after": after})["sensorOrError"]
    return list(data["sensorState"]["ticks"])


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def prepare(dep: DagsterDeployment) -> None:
    """A full sync (the steady state), then one sensor check after it, so that the next change is seen."""
    outcome = trigger_of(dep).wait(
        enqueue_full_sync(settings=load_settings({"TERCUL_SYNC_DAGSTER_URL": dep.url}))
    )
    if not outcome.succeeded:
        raise RuntimeError(f"full sync {outcome.run_id} ended {outcome.status}: {dep.log_tail()}")
    after = time.time()
    wait_for(lambda: sensor_ticks(dep, after), 180, "a sensor check after the full sync", every=1)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile, nearest rank (p95 of 20 values: the 19th)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------------------------
# freshness


def live_work_ids(engine: sa.Engine, n: int, seed: int) -> list[int]:
    with engine.connect() as conn:
        ids = list(
            conn.execute(sa.text("SELECT id FROM works WHERE deleted_at IS NULL ORDER BY id")).scalars()
        )
    return random.Random(seed).sample(ids, n)


def commit_title(engine: sa.Engine, work_id: int, title: str) -> float:
    """Update one Work the way Tercul does (``updated_at`` moves); the wall time when the commit returned."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE works SET title = :t, updated_at = now() WHERE id = :i"),
            {"t": title, "i": work_id},
        )
    return time.time()


def measure_freshness(
    dep: DagsterDeployment, engine: sa.Engine, client: Any, config: Config, updates: int, seed: int
) -> list[dict[str, Any]]:
    import dagster as dg

    interval = config.sensor_interval or 30
    rng = random.Random(seed)
    instance = instance_of(dep)
    works = client.collections.use("Work")
    rows = []
    for i, work_id in enumerate(live_work_ids(engine, updates, seed)):
        time.sleep(rng.uniform(0.5, interval + 5))  # a random phase of the sensor's (and queue's) cycle
        title = f"fresh {config.name} {i} {uuid.uuid4().hex[:6]}"
        committed = commit_title(engine, work_id, title)

        def readable(work_id: int = work_id, title: str = title) -> float | None:
            obj = works.query.fetch_object_by_id(object_uuid("Work", work_id))
            return time.time() if obj is not None and obj.properties["title"] == title else None

        seen = wait_for(readable, 600, f"Work {work_id} in Weaviate", every=0.2)
        runs = instance.get_run_records(
            dg.RunsFilter(
                tags={"tercul_sync/trigger": "tercul_changes"},
                created_after=datetime.fromtimestamp(committed - 1, tz=UTC),
            ),
            ascending=True,
        )
        created = runs[0].create_timestamp.timestamp() if runs else float("nan")
        rows.append(
            {
                "config": config.name,
                "update": i,
                "work_id": work_id,
                "committed": committed,
                "seconds": round(seen - committed, 2),
                "to_run_created": round(created - committed, 2),
                "run_id": runs[0].dagster_run.run_id if runs else None,
                "load1": os.getloadavg()[0],  # the machine's 1-minute load average (2 cores, shared)
            }
        )
        print(
            f"  {config.name} update {i:2d}: Work {work_id} readable after {seen - committed:5.1f} s",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------
# where a run's time goes


def phases(instance: Any, run_id: str) -> dict[str, float]:
    """A finished run's time, split by its event log (and its record's creation time), in seconds."""
    record = instance.get_run_record_by_id(run_id)
    created = record.create_timestamp.timestamp()
    first: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    events = 0
    per_asset: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        events += 1
        kind = entry.dagster_event_type.name if entry.dagster_event_type else None
        if kind is None:
            continue
        first.setdefault(kind, entry.timestamp)
        if kind in ("STEP_START", "STEP_SUCCESS") and entry.step_key:
            steps.setdefault(entry.step_key, []).append(entry.timestamp)
        mat = entry.asset_materialization
        if mat is not None and "duration_s" in mat.metadata:
            # The engine's own timing of the step; a step over a range of shards reports one
            # materialization per shard, each with the step's metadata: counted once.
            per_asset[mat.asset_key.to_user_string()] = float(mat.metadata["duration_s"].value)
    starts = [t[0] for t in steps.values()]
    ends = [t[-1] for t in steps.values()]
    in_steps = sum(t[-1] - t[0] for t in steps.values())
    out = {
        # Dagster 1.13 records no dequeue event: RUN_STARTING is when the daemon launched it.
        "queued: created → the daemon launches it": first["RUN_STARTING"] - created,
        "run process up (start, imports): starting → run start": first["RUN_START"] - first["RUN_STARTING"],
        "executor: run start → first step start": min(starts) - first["RUN_START"],
        "inside steps (STEP_START → STEP_SUCCESS, summed)": in_steps,
        "of which the sync itself (duration_s, summed)": sum(per_asset.values()),
        "between steps (first start → last success, minus steps)": max(ends) - min(starts) - in_steps,
        "end: last step → run success": first["RUN_SUCCESS"] - max(ends),
        "total: created → run success": first["RUN_SUCCESS"] - created,
        "steps": float(len(steps)),
        "events written": float(events),
    }
    for key, times in sorted(steps.items()):
        out[f"step {key}"] = times[-1] - times[0]
        out[f"step {key}: its sync (duration_s)"] = per_asset.get(key, float("nan"))
    return out


SMALL_RUN = """
mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""


def launch_small_run(
    dep: DagsterDeployment,
    job: str,
    assets: Sequence[str],
    checks: Sequence[tuple[str, str]] | None,
    tags: Mapping[str, str],
) -> str:
    """Launch ``job`` on ``assets`` (and ``checks``, (asset, name) pairs; None: every check of them)."""
    selector: dict[str, Any] = {
        "repositoryLocationName": "tercul_sync",
        "repositoryName": "__repository__",
        "jobName": job,
        "assetSelection": [{"path": [a]} for a in assets],
    }
    if checks is not None:
        selector["assetCheckSelection"] = [{"assetKey": {"path": [a]}, "name": n} for a, n in checks]
    params = {
        "selector": selector,
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    launched = dep.graphql(SMALL_RUN, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"{job}: {launched}")
    return str(launched["run"]["runId"])


Variant = tuple[str, Sequence[str], Sequence[tuple[str, str]] | None]


def measure_runs(
    dep: DagsterDeployment, engine: sa.Engine, variants: Mapping[str, Variant], samples: int
) -> pd.DataFrame:
    """``samples`` runs of each variant (job, assets, checks), in turn, each after one updated Work row."""
    from tercul_sync.defs import jobs
    from tercul_sync.engine.runs import INCREMENTAL

    tags = {**jobs.ALL_SHARDS_TAGS, "tercul_sync/mode": INCREMENTAL, jobs.TRIGGER_TAG: "bench_freshness"}
    instance = instance_of(dep)
    trigger = trigger_of(dep)
    per_variant: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    ids = live_work_ids(engine, samples * len(variants), seed=99)
    for i in range(samples):
        for name, (job, assets, checks) in variants.items():
            commit_title(engine, ids.pop(), f"small run {name} {i}")
            run_id = launch_small_run(dep, job, assets, checks, tags)
            outcome = trigger.wait(run_id, timeout=600)
            if not outcome.succeeded:
                raise RuntimeError(f"{name} run {run_id} ended {outcome.status}: {dep.log_tail()}")
            per_variant[name].append(phases(instance, run_id))
            print(
                f"  run {i} {name}: {per_variant[name][-1]['total: created → run success']:.1f} s", flush=True
            )
    table = {name: pd.DataFrame(rows).median(numeric_only=True) for name, rows in per_variant.items()}
    return pd.DataFrame(table).round(2)


# ---------------------------------------------------------------------------------------------
# idle


def tree_cpu(processes: Sequence[subprocess.Popen]) -> float:
    """CPU seconds (user + system) used so far by the processes and their living children."""
    total = 0.0
    for p in processes:
        try:
            proc = psutil.Process(p.pid)
            for q in [proc, *proc.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def measure_idle(dep: DagsterDeployment, seconds: float) -> dict[str, Any]:
    instance = instance_of(dep)
    import dagster as dg

    start = time.time()
    cpu_before = tree_cpu(dep.processes)
    time.sleep(seconds)
    cpu = tree_cpu(dep.processes) - cpu_before
    runs = instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(start, tz=UTC)))
    by_trigger: dict[str, int] = {}
    for r in runs:
        trig = r.dagster_run.tags.get("tercul_sync/trigger", "untagged")
        by_trigger[trig] = by_trigger.get(trig, 0) + 1
    ticks = sensor_ticks(dep, start)
    statuses: dict[str, int] = {}
    for t in ticks:
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    return {
        "idle_seconds": seconds,
        "runs_by_trigger": by_trigger,
        "sensor_runs": by_trigger.get("tercul_changes", 0),
        "sensor_ticks": len(ticks),
        "sensor_ticks_by_status": statuses,
        "skip_reasons": sorted({t["skipReason"] for t in ticks if t["skipReason"]}),
        "cpu_seconds_webserver_daemon": round(cpu, 1),
    }


# ---------------------------------------------------------------------------------------------


def summary(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    out = []
    for name, group in df.groupby("config", sort=False):
        s = list(group["seconds"])
        detect = [v for v in group["to_run_created"] if v == v]  # not NaN
        rest = [a - b for a, b in zip(group["seconds"], group["to_run_created"], strict=True) if b == b]
        config = CONFIGS[str(name)]
        out.append(
            {
                "configuration": f"{name}: {config.describe()}",
                "updates": len(s),
                "p50 s": round(statistics.median(s), 1),
                "p95 s": round(pct(s, 95), 1),
                "max s": round(max(s), 1),
                "target p95 s": 60 if name == "default" else 15,
                "p50 commit → run created s": round(statistics.median(detect), 1) if detect else None,
                "p50 run created → readable s": round(statistics.median(rest), 1) if rest else None,
                "load average (1 min, median)": round(statistics.median(group["load1"]), 1)
                if "load1" in group
                else None,
            }
        )
    return pd.DataFrame(out)


def breakdown_table(runs: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Medians per phase, one column per variant; the sync itself summed from the steps' own figures."""
    table = pd.DataFrame(runs)
    order = [
        "queued: created → the daemon launches it",
        "run process up (start, imports): starting → run start",
        "executor: run start → first step start",
        "inside steps (STEP_START → STEP_SUCCESS, summed)",
        "of which the sync itself (duration_s, summed)",
        "between steps (first start → last success, minus steps)",
        "end: last step → run success",
        "total: created → run success",
        "steps",
        "events written",
    ]
    table = table.reindex([*order, *sorted(i for i in table.index if i not in order)]).dropna(how="all")
    sync_rows = [i for i in table.index if str(i).endswith(": its sync (duration_s)")]
    table.loc["of which the sync itself (duration_s, summed)"] = table.loc[sync_rows].sum(min_count=1)
    return table.round(2)


def idle_table(idle: Mapping[str, Any]) -> pd.DataFrame:
    ticks = idle["sensor_ticks_by_status"]
    rows = [
        ("seconds left alone", idle["idle_seconds"]),
        ("runs launched by the sensor `tercul_changes`", idle["sensor_runs"]),
        *(
            (f"runs launched by `{trigger}`", n)
            for trigger, n in sorted(idle["runs_by_trigger"].items())
            if trigger != "tercul_changes"
        ),
        ("sensor checks evaluated", idle["sensor_ticks"]),
        *((f"of which {status.lower()}", n) for status, n in sorted(ticks.items())),
        ("skip reasons", "; ".join(idle["skip_reasons"])),
        (
            "CPU seconds of dagster-webserver + dagster-daemon (and children)",
            idle["cpu_seconds_webserver_daemon"],
        ),
    ]
    return pd.DataFrame(rows, columns=["idle deployment, default settings", "value"])


def sections(figures: Mapping[str, Any]) -> dict[str, str]:
    """Markdown per section, for the sections ``figures`` has."""
    out = {}
    if figures.get("freshness"):
        out["freshness"] = summary(figures["freshness"]).to_markdown(index=False)
    if figures.get("runs"):
        out["runs"] = breakdown_table(figures["runs"]).to_markdown()
    if figures.get("idle"):
        out["idle"] = idle_table(figures["idle"]).to_markdown(index=False)
    return out


def write_docs(path: Path, blocks: Mapping[str, str]) -> None:
    """Each block between its markers (``<!-- bench_freshness:NAME:begin -->`` ... ``:end -->``)."""
    doc = path.read_text()
    for name, text in blocks.items():
        begin, end = f"<!-- bench_freshness:{name}:begin -->", f"<!-- bench_freshness:{name}:end -->"
        block = f"{begin}\n{text.strip()}\n{end}"
        if begin in doc:
            doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _, b=block: b, doc, flags=re.S)
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000, help="demo rows (all tables together)")
    ap.add_argument("--updates", type=int, default=20, help="updates per configuration; 0: none")
    ap.add_argument("--configs", default="default,tuned", help=f"of {sorted(CONFIGS)}")
    ap.add_argument("--run-samples", type=int, default=0, help="small runs per variant for the breakdown")
    ap.add_argument("--idle-seconds", type=float, default=0, help="leave a default deployment idle this long")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--json", type=Path, help="write every figure here too")
    ap.add_argument("--out", type=Path, help="the markdown file to write the tables into (between markers)")
    ap.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="measure nothing: print (and --out) the tables of these --json files",
    )
    args = ap.parse_args(argv)

    if args.report:
        figures = {k: v for f in args.report for k, v in json.loads(f.read_text()).items()}
    else:
        figures = measure(args)
    blocks = sections(figures)
    for name, text in blocks.items():
        print(f"\n{name}\n{text}")
    if args.out and blocks:
        write_docs(args.out, blocks)
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    subprocess.run([str(ROOT / "scripts" / "postgres-up")], check=True, stdout=subprocess.DEVNULL)
    os.environ.setdefault("TERCUL_SYNC_HOME", str(ROOT / ".tercul"))  # the repository's Weaviate binary
    figures: dict[str, Any] = {
        "rows": args.rows,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_freshness_") as tmp, database("tercul_bench") as source:
        work = Path(tmp)
        source_url = pg_url(source)
        engine = reading.make_engine(source_url)
        written = demo_data.generate(engine, args.rows, seed=args.seed)
        print(f"demo database {source}: {written}", flush=True)
        server = weaviate_server.start(work / "weaviate")
        client = wc.connect(server.url, server.grpc_port, None, timeout_s=60)
        try:
            if args.idle_seconds:
                client.collections.delete_all()
                with deployment(work / "idle", CONFIGS["default"], source_url, server, schedules=True) as dep:
                    prepare(dep)
                    print(f"idle for {args.idle_seconds:.0f} s ...", flush=True)
                    figures["idle"] = measure_idle(dep, args.idle_seconds)
            rows: list[dict[str, Any]] = []
            for name in [c for c in args.configs.split(",") if c] if args.updates else []:
                client.collections.delete_all()
                config = CONFIGS[name]
                with deployment(work / name, config, source_url, server, schedules=False) as dep:
                    prepare(dep)
                    print(f"{name} ({config.describe()}): {args.updates} updates", flush=True)
                    rows += measure_freshness(dep, engine, client, config, args.updates, args.seed)
                    if args.run_samples and name == "tuned":
                        figures["runs"] = run_breakdown(dep, engine, args.run_samples)
            figures["freshness"] = rows
        finally:
            client.close()
            server.stop()
            engine.dispose()
    figures["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return figures


def run_breakdown(dep: DagsterDeployment, engine: sa.Engine, samples: int) -> dict[str, dict[str, float]]:
    """The sensor's run as it was (``incremental_sync``, multiprocess, edges, every check) and each cut."""
    from tercul_sync.defs import sensors

    own = [(k.asset_key.to_user_string(), k.name) for k in sensors.own_checks(["Work", "passages"])]
    variants: dict[str, Variant] = {
        "before: incremental_sync, multiprocess, Work+edges+passages, all checks": (
            "incremental_sync",
            ["Work", "edges", "passages"],
            None,
        ),
        "in process (sync_changes), Work+edges+passages, all checks": (
            sensors.CHANGES_JOB,
            ["Work", "edges", "passages"],
            None,
        ),
        "in process, no edges (Work+passages), all checks": (sensors.CHANGES_JOB, ["Work", "passages"], None),
        "after: in process, Work+passages, own checks (no parity)": (
            sensors.CHANGES_JOB,
            ["Work", "passages"],
            own,
        ),
    }
    table = measure_runs(dep, engine, variants, samples)
    result: dict[str, dict[str, float]] = table.to_dict()
    return result


if __name__ == "__main__":
    sys.exit(main())
