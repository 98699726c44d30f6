"""Where a ``dagster job execute`` run's seconds went, read back from its instance's event log.

``core_steps`` are the entity steps and ``edges``; any other step (``passages``)
is listed apart, and ``to_edges_done_s`` is when the last core step ended.

For each step: when its process was asked for (``STEP_WORKER_STARTING``),
when it started (``STEP_START``, after the process and its resources were
up), when it ended, the engine's own ``duration_s`` (the asset body: schema check, engine call,
vector check; every shard's materialization carries the same value)
and how often it was retried. For the run: command start to ``RUN_START``
(the CLI importing the code location and setting up), the entity wave, the
edges step, and ``RUN_SUCCESS`` to the command's exit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance

RETRY_EVENTS = {DagsterEventType.STEP_UP_FOR_RETRY.value, DagsterEventType.STEP_RESTARTED.value}


@contextlib.contextmanager
def dagster_on_postgres(home: Path, prefix: str) -> Iterator[dict[str, str]]:
    """The repository's ``dagster.yaml`` in ``home`` (runs and events in PostgreSQL, as production) on a
    new database ``<prefix>_<random>``, dropped afterwards. Yields its ``DAGSTER_PG_*`` settings, also set
    in this process meanwhile: the instance is read back here too (``timeline``)."""
    from tercul_sync.devtools.dagster_deployment import PostgresStorage, write_instance_config

    storage = PostgresStorage(
        f"{prefix}_{uuid.uuid4().hex[:8]}",
        os.environ.get("TERCUL_PG_USER", "tercul"),
        os.environ.get("TERCUL_PG_PASSWORD", "tercul"),
        port=int(os.environ.get("TERCUL_PG_PORT", "5432")),
    )
    admin = sa.create_engine(
        f"postgresql+psycopg2://{storage.user}:{storage.password}@{storage.host}:{storage.port}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{storage.db}"'))
    write_instance_config(home)
    settings = storage.env()
    os.environ.update(settings)
    try:
        yield settings
    finally:
        for key in settings:
            os.environ.pop(key, None)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{storage.db}" WITH (FORCE)'))
        admin.dispose()


def make_instance(home: Path, env: dict[str, str], python: str) -> float:
    """Make the tables of the instance at ``home`` (as ``dagster-webserver`` or the daemon does when it
    first starts on a new database) in a process of its own; its seconds."""
    started = time.perf_counter()
    subprocess.run(
        [python, "-c", "from dagster import DagsterInstance; DagsterInstance.get().dispose()"],
        env={**env, "DAGSTER_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _metadata_value(v: Any) -> Any:
    return getattr(v, "value", v)


def timeline(
    dagster_home: Path, command_started: float, command_seconds: float, core_steps: set[str]
) -> dict[str, Any]:
    """The newest run of the instance at ``dagster_home``, as seconds relative to the command's start."""
    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        run = instance.get_runs(limit=1)[0]
        logs = instance.all_logs(run.run_id)
    finally:
        instance.dispose()
    marks: dict[str, float] = {}
    steps: dict[str, dict[str, Any]] = defaultdict(lambda: {"retries": 0, "engine_s": 0.0})
    for entry in logs:
        ev = entry.dagster_event
        if ev is None:
            continue
        kind, at = ev.event_type_value, entry.timestamp - command_started
        if entry.step_key is None:
            marks.setdefault(kind, at)
            continue
        s = steps[entry.step_key]
        if kind == DagsterEventType.STEP_WORKER_STARTING.value:
            s.setdefault("asked", at)
        elif kind == DagsterEventType.STEP_START.value:
            s["start"] = at  # the last start wins: a retried step starts again
        elif kind in (DagsterEventType.STEP_SUCCESS.value, DagsterEventType.STEP_FAILURE.value):
            s["end"], s["outcome"] = at, kind
            if kind == DagsterEventType.STEP_FAILURE.value:
                s.setdefault("retry_errors", []).append(_error_text(ev))
        elif kind in RETRY_EVENTS:
            s["retries"] += kind == DagsterEventType.STEP_UP_FOR_RETRY.value
            if kind == DagsterEventType.STEP_UP_FOR_RETRY.value:  # why: kept in the run's details
                s.setdefault("retry_errors", []).append(_error_text(ev))
        elif kind == DagsterEventType.ASSET_MATERIALIZATION.value:
            md = ev.event_specific_data.materialization.metadata  # type: ignore[union-attr]
            if "duration_s" in md:  # one materialization per shard, each with the step's duration
                s["engine_s"] = max(s["engine_s"], float(_metadata_value(md["duration_s"])))
    rows = []
    for key, s in sorted(steps.items(), key=lambda kv: kv[1].get("asked", kv[1].get("start", 0))):
        start, end = s.get("start"), s.get("end")
        rows.append(
            {
                "step": key,
                "asked_at": s.get("asked"),
                "started_at": start,
                "ended_at": end,
                "process_start_s": (start - s["asked"]) if start is not None and "asked" in s else None,
                "step_s": (end - start) if start is not None and end is not None else None,
                "engine_s": s["engine_s"],
                "retries": s["retries"],
                "outcome": s.get("outcome", "").replace("STEP_", "").lower(),
                "errors": s.get("retry_errors", []),
            }
        )
    entity = [
        r for r in rows if r["step"] in core_steps and r["step"] != "edges" and r["ended_at"] is not None
    ]
    core_ends = [r["ended_at"] for r in rows if r["step"] in core_steps and r["ended_at"] is not None]
    edges = next((r for r in rows if r["step"] == "edges"), None)
    run_start = marks.get(DagsterEventType.RUN_START.value)
    run_end = marks.get(DagsterEventType.RUN_SUCCESS.value, marks.get(DagsterEventType.RUN_FAILURE.value))
    return {
        "run_id": run.run_id,
        "status": str(run.status.value),
        "steps": rows,
        "command_s": command_seconds,
        "to_run_start_s": run_start,
        # An in-process executor starts no step worker: its steps are "asked for" when they start.
        "entity_wave_s": (max(r["ended_at"] for r in entity) - min(_asked(r) for r in entity))
        if entity
        else None,
        "edges_s": (edges["ended_at"] - _asked(edges)) if edges and edges["ended_at"] else None,
        "after_run_end_s": (command_seconds - run_end) if run_end is not None else None,
        "retries": sum(r["retries"] for r in rows),
        "extra_steps": [r["step"] for r in rows if r["step"] not in core_steps],
        "to_edges_done_s": max(core_ends) if core_ends else None,
        "engine_s_total": sum(r["engine_s"] for r in rows),
        "step_s_total": sum(r["step_s"] or 0 for r in rows),
    }


def _error_text(event: Any, limit: int = 2000) -> str:
    """A failed or retried step's error with its causes, cut to ``limit`` characters."""
    data = event.event_specific_data
    error = getattr(data, "error", None)
    told = []
    while error is not None:
        told.append(f"{error.cls_name}: {error.message.strip()}")
        error = error.cause
    return " <- ".join(told)[:limit] or str(data)[:limit]


def _asked(step: dict[str, Any]) -> float:
    """When a step was asked for: its worker's start (multiprocess), or its own start (in process)."""
    return float(step["asked_at"] if step["asked_at"] is not None else step["started_at"])
