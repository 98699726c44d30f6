"""The tables (pandas) and the chart (matplotlib) of bench_peers.py, printed and written as Markdown.

A hand-written part of an existing report, between ``<!-- notes -->`` and
``<!-- /notes -->``, is kept when the report is written again.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_EXECUTORS = "multiprocess,in_process"  # bench_peers.py --executors
NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)
NOTES_PLACEHOLDER = "<!-- notes -->\n<!-- /notes -->"


def _limit_seconds(rows: list[dict[str, Any]]) -> float | None:
    """The limit: ``insert_many``'s seconds, the mean when it was measured at the start and the end."""
    found = [r["seconds"] for r in rows if r["tool"] == "limit" and r["run"].startswith("insert_many")]
    return sum(found) / len(found) if found else None


def figures(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per measured run: seconds, objects/s, share of the limit, memory, check."""
    limit_s = _limit_seconds(rows)
    out = []
    for r in rows:
        partial = r["run"] == "incremental"
        mem = not r.get("derived")
        out.append(
            {
                "tool": r["tool"],
                "run": r["run"],
                "seconds": f"{r['seconds']:.1f}",
                "objects/s": "" if partial else f"{r['objects'] / r['seconds']:,.0f}",
                "share of the limit": "" if partial or not limit_s else f"{limit_s / r['seconds']:.2f}",
                "peak RSS, MB": f"{r['peak_rss_mb']:,.0f}" if mem else "",
                "peak PSS, MB": f"{r['peak_pss_mb']:,.0f}" if mem else "",
                "processes": r["processes"] if mem else "",
                "Weaviate RSS, MB": f"{r['server_rss_mb']:,.0f}" if r["server_rss_mb"] and mem else "",
                "other load, cores": f"{r.get('other_cpu_cores', 0):.2f}" if mem else "",
                "check": r.get("check", ""),
            }
        )
    return pd.DataFrame(out)


def engine_steps(details: dict[str, Any]) -> pd.DataFrame:
    table: dict[str, dict[str, Any]] = {}
    for run, r in details.get("engine", {}).items():
        for s in r["steps"]:
            table.setdefault(s["step"], {})[f"{run}, s"] = round(s["seconds"], 2)
    df = pd.DataFrame.from_dict(table, orient="index")
    df.index.name = "step"
    return df.reset_index()


def engine_counts(details: dict[str, Any], run: str) -> pd.DataFrame:
    r = details.get("engine", {}).get(run)
    if not r:
        return pd.DataFrame()
    keep = ["step", "seconds", "rows_read", "rows_changed", "written", "unchanged", "deleted", "failed"]
    df = pd.DataFrame([s for s in r["steps"] if s["step"] != "schema"])
    df = df[[c for c in keep if c in df.columns]]
    df["seconds"] = df["seconds"].round(2)
    for c in df.columns[2:]:
        df[c] = df[c].fillna(0).astype(int)
    last = r["steps"][-1]
    notes = []
    if last.get("sources_of_removed_targets"):
        notes.append(f"{last['sources_of_removed_targets']} sources of removed targets")
    if last.get("reconciled"):
        notes.append("rewritten by the reference-count check: " + ", ".join(last["reconciled"]))
    if notes:
        df["note"] = ""
        df.loc[df["step"] == "edges", "note"] = "; ".join(notes)
    return df


def _dagster_runs(details: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(executor, run, timeline) of every Dagster run measured (older reports: one executor, unnamed)."""
    runs = details.get("dagster", {})
    if runs and all("steps" in tl for tl in runs.values()):
        return [("multiprocess", run, tl) for run, tl in runs.items()]
    return [(ex, run, tl) for ex, by_run in runs.items() for run, tl in by_run.items()]


def dagster_steps(details: dict[str, Any]) -> pd.DataFrame:
    out = []
    for executor, run, tl in _dagster_runs(details):
        for s in tl["steps"]:
            out.append(
                {
                    "executor": executor,
                    "run": run,
                    "step": s["step"],
                    "asked at, s": _r(s["asked_at"]),
                    "process start, s": _r(s["process_start_s"]),
                    "step, s": _r(s["step_s"]),
                    "asset body (duration_s), s": _r(s["engine_s"]),
                    "retries": s["retries"],
                    "ended at, s": _r(s["ended_at"]),
                }
            )
    return pd.DataFrame(out)


def dagster_runs(details: dict[str, Any]) -> pd.DataFrame:
    out = []
    for executor, run, tl in _dagster_runs(details):
        out.append(
            {
                "executor": executor,
                "run": run,
                "command, s": _r(tl["command_s"]),
                "start to RUN_START, s": _r(tl["to_run_start_s"]),
                "entity steps, s": _r(tl["entity_wave_s"]),
                "edges step, s": _r(tl["edges_s"]),
                "RUN_SUCCESS to exit, s": _r(tl["after_run_end_s"]),
                "sum of steps, s": _r(tl["step_s_total"]),
                "sum of asset bodies, s": _r(tl["engine_s_total"]),
                "step retries": tl["retries"],
            }
        )
    return pd.DataFrame(out)


def dlt_steps(details: dict[str, Any]) -> pd.DataFrame:
    table: dict[str, dict[str, Any]] = {}
    for run, r in details.get("dlt", {}).items():
        for s in r.get("steps", []):
            table.setdefault(s["step"], {})[f"{run}, s"] = _r(s["seconds"])
    df = pd.DataFrame.from_dict(table, orient="index")
    df.index.name = "dlt step"
    return df.reset_index()


def changes(details: dict[str, Any]) -> pd.DataFrame:
    df = pd.DataFrame.from_dict(details.get("changes", {}), orient="index").fillna(0).astype(int)
    df.index.name = "table"
    return df.reset_index()


def _r(v: Any, digits: int = 1) -> Any:
    return None if v is None else round(float(v), digits)


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "(not measured)"
    return df.astype(object).where(df.notna(), "").to_markdown(index=False, floatfmt=",g")


def incremental_line(rows: list[dict[str, Any]]) -> str:
    by = {(r["tool"], r["run"]): r for r in rows}
    inc, full = by.get(("tercul_sync engine", "incremental")), by.get(("tercul_sync engine", "full"))
    first = by.get(("tercul_sync engine", "first"))
    if not inc or not full:
        return ""
    line = (
        f"the incremental engine run after the changes took {inc['seconds']:.1f} s, against "
        f"{full['seconds']:.1f} s for a full engine run over the same data "
        f"({inc['seconds'] / full['seconds']:.0%} of it)"
    )
    if first:
        share = inc["seconds"] / first["seconds"]
        line += f" and {first['seconds']:.1f} s for the first sync ({share:.1%} of it)"
    return line


def print_summary(rows: list[dict[str, Any]], details: dict[str, Any], data: dict[str, Any]) -> None:
    print()
    print(f"{data['live_total']:,} live rows over {len(data['live'])} entity types, database {data['name']}")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(figures(rows).to_string(index=False))
        if details.get("dagster"):
            print()
            print(dagster_runs(details).to_string(index=False))
            print(dagster_steps(details).to_string(index=False))
            for executor, run, tl in _dagster_runs(details):
                for step in tl["steps"]:
                    for error in step.get("errors", []):  # why a step was retried or failed
                        print(f"{executor} {run} {step['step']}: {error}")
        if details.get("dlt"):
            print()
            print(dlt_steps(details).to_string(index=False))
        print()
        print(engine_steps(details).to_string(index=False))
    line = incremental_line(rows)
    if line:
        print()
        print(line)


COLORS = {
    "limit": "#9e9e9e",
    "dlt": "#e07b39",
    "tercul_sync via Dagster": "#3b6ea8",
    "tercul_sync via Dagster, multiprocess": "#3b6ea8",
    "tercul_sync via Dagster, in_process": "#6f94c4",
    "tercul_sync engine": "#5aa469",
    "tercul_sync parity check": "#8e6bb8",
}


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars, seconds per tool and run, in the order measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['tool']}: {r['run']}" for r in rows]
    seconds = [r["seconds"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.4))
    bars = ax.barh(labels, seconds, color=[COLORS.get(r["tool"], "#777777") for r in rows])
    ax.bar_label(bars, labels=[f"{s:.1f} s" for s in seconds], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(seconds) * 1.15)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path,
    args: argparse.Namespace,
    info: dict[str, Any],
    data: dict[str, Any],
    rows: list[dict[str, Any]],
    details: dict[str, Any],
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    live = data["live_total"]
    chart(rows, png, f"{live:,} live rows, one PostgreSQL, one Weaviate, {info['cores']} cores")
    notes = NOTES_PLACEHOLDER
    if out.exists():
        found = NOTES.search(out.read_text())
        notes = found.group(0) if found else notes
    lim = details.get("limit", {})
    by_type = ", ".join(f"{c} {n:,}" for c, n in data["live"].items())
    line = incremental_line(rows)
    on_sqlite = getattr(args, "dagster_storage", "sqlite") == "sqlite"  # figures saved before the option
    storage = (
        "SQLite storage, telemetry off"
        if on_sqlite
        else "the repository's `dagster.yaml`: `PooledPostgresStorage` on a new PostgreSQL database, "
        "telemetry off"
    )
    made = details.get("dagster_instance_made_s", {})
    if made and not on_sqlite:
        storage += (
            "; its tables were made before the first `full_sync` (as `dagster-webserver` makes them "
            "when it first starts: "
            + ", ".join(f"{s:.1f} s for {ex}" for ex, s in made.items())
            + ", not counted)"
        )
    elif not on_sqlite and not args.skip_dagster and hasattr(args, "new_dagster_instance"):
        storage += "; the first `full_sync` made its tables (`--new-dagster-instance`)"
    command = (
        f".venv/bin/python benchmarks/bench_peers.py --rows {args.rows}"
        + (" --skip-dlt" if args.skip_dlt else "")
        + (" --skip-dagster" if args.skip_dagster else "")
        + (" --skip-limit" if getattr(args, "skip_limit", False) else "")
        + (
            f" --executors {args.executors}"
            if not args.skip_dagster and getattr(args, "executors", DEFAULT_EXECUTORS) != DEFAULT_EXECUTORS
            else ""
        )
        + (" --limit-once" if getattr(args, "limit_once", False) else "")
        + (" --delete-log" if getattr(args, "delete_log", False) else "")
        + (" --dagster-storage sqlite" if on_sqlite and not args.skip_dagster else "")
        + (" --new-dagster-instance" if getattr(args, "new_dagster_instance", False) else "")
        + (f" --code {args.code}" if getattr(args, "code", None) else "")
        + f" --out {out}"
    )
    limits = [r["seconds"] for r in rows if r["tool"] == "limit" and r["run"].startswith("insert_many")]
    spread = (
        f" In this run the limit itself took {limits[0]:.1f} s at the start and {limits[-1]:.1f} s "
        "at the end."
        if len(limits) > 1
        else ""
    )
    dlt_version = details.get("dlt", {}).get("first", {}).get("dlt_version", "(not run)")
    load = ", ".join(f"{x:.2f}" for x in info["load_before"])
    parts = [
        "# Benchmarks: tercul_sync against its peers and the server's limit",
        "",
        "Written by `benchmarks/bench_peers.py` from one run:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"**Machine**: {info['cores']} cores ({info['cpu']}), {info['memory_gb']:.0f} GB of memory, "
        "shared and noisy: the same measurement can differ by a third from one run to the next, and other "
        "sessions' tests may run at the same time (the *other load* column), so compare figures within one "
        f"run, not across runs, and read ratios to within 20 or 30%.{spread} Load average when the run "
        f"started: {load}. "
        f"Everything ran on this one machine: PostgreSQL {info['postgres']}, Weaviate "
        f"{info['weaviate_server']} (one node, local binary), the tools, and the benchmark itself.",
        "",
        f"**Data**: `demo_data.generate(engine, {args.rows}, seed={args.seed})` into database "
        f"`{data['name']}` ({data['size_mb']:.0f} MB), {live:,} live rows: {by_type}."
        + (
            f" As objects: {lim.get('payload_mb', 0):.0f} MB of request payload and "
            f"{lim.get('references', 0):,} references."
            if lim
            else ""
        ),
        "",
        f"**Versions**: weaviate-client {info['weaviate_client']}, dagster {info['dagster']}, "
        f"dlt {dlt_version}, Python {info['python']}; tercul_sync at {info['commit']}. "
        f"`TERCUL_SYNC_VECTORIZER=none`: no vectors anywhere. Whole run: {info['total_s'] / 60:.0f} minutes.",
        "",
        "## Figures",
        "",
        "*Share of the limit* is the limit's seconds (pre-built objects written with `insert_many`; the "
        "mean of its measurements, at the start and at the end of the run) divided by the run's: 1.0 "
        "is as fast as the server takes the same objects. *Objects/s* counts every live object "
        "a run covers, written or found unchanged. *Peak RSS* is summed over the run's process tree, "
        "sampled every 0.2 s (for the limit and the engine, each run in a process of its own, it is that "
        "process's own high-water mark). *PSS* divides shared pages among the processes sharing them, so "
        "a forkserver's children do not count its pages again and again. *Weaviate RSS* is the server's "
        "peak during the run. *Other load* is the CPU that processes outside the measurement (neither the "
        "run's own, nor Weaviate's, nor PostgreSQL's) used meanwhile, in cores: on a 2-core machine, 0.7 "
        "means a neighbour took about a third of it. *Check* compares the objects in Weaviate with the "
        "live rows.",
        "",
        _md(figures(rows)),
        "",
        f"![seconds per tool and run]({png.name})",
        "",
    ]
    if line:
        parts += [f"**Incremental**: {line}.", ""]
    parts += [
        notes,
        "",
        "## How each was measured",
        "",
        "- **The limit**: every live row read and built with `tercul_sync.engine.objects.build_object`, "
        "with its reference lists (live edges to live targets), all held in memory before the clock "
        "starts; then written into an empty Weaviate, collection by collection in `sync_order()`, with "
        "`collection.data.insert_many` in batches of 500 (one synchronous gRPC request per batch), and "
        "again, into an emptied Weaviate, with `batch.fixed_size(batch_size=500, concurrent_requests=2)`. "
        "Weaviate refuses a reference to an object that does not exist yet, so objects that refer to "
        "their own collection (Category.parent) are written first without those references and again, "
        "whole, at the end, as tercul_sync's edges pass does. The limit's RSS includes every object "
        "built in advance. The `fixed_size` batcher waits up to a second for a batch to fill before "
        "sending a partial one, which it does once per collection. The limit is measured at the start "
        "of the run and again at the end (on the changed data), to show how much the machine drifted "
        "in between.",
        "- **dlt**: `dlt.sources.sql_database.sql_database` over the seven entity tables (soft-deleted "
        "rows left out by a query adapter), every resource `write_disposition='merge'`, "
        "`primary_key='id'`, into the `weaviate` destination (`connection_type=local`, "
        "`vectorizer=none`, `module_config={}`, URL and ports from `DESTINATION__WEAVIATE__CREDENTIALS__*`), "
        "dataset `dlt_bench`, in its own virtualenv (`.tercul/bench-venv`), defaults otherwise. The "
        "re-run is the same command with the same pipeline folder: dlt extracts, normalizes and upserts "
        "everything again. dlt writes no cross-references and never removes a hard-deleted row.",
        "- **tercul_sync via Dagster**: `dagster job execute -m tercul_sync.definitions -j full_sync` "
        f"with a fresh `DAGSTER_HOME` ({storage}), every tercul_sync setting at its "
        "default; the clock is the command's wall time. Step timings come from the run's event log "
        "(`peers_dagster.py`). When the job has steps the peers do not (`passages`), a second line "
        "gives the time from the command's start to the end of the last entity or edges step, read "
        "from the same event log.",
        "- **tercul_sync engine**: `runs.run_entity(ctx, e, shards, mode, cursors)` for each entity "
        "type of `sync_order()` over 8 shards, then `runs.run_edges`, schema check included, in one "
        "process, no Dagster; timed around the work.",
        f"- **Incremental**: {args.changed:.0%} of every table changed (below), then "
        "`runs.run_entity(..., runs.INCREMENTAL, cursors)` for each type and "
        "`runs.run_edges(..., runs.INCREMENTAL, ...)` from the engine re-run's cursors, then a full "
        "engine run over the same data. "
        + (
            "The delete log (`tercul-sync delete-log`) was installed before the first run "
            "(`--delete-log`): the incremental run read the rows and edges deleted outright from it."
            if data.get("delete_log")
            else "No delete log: the incremental run found rows and edges deleted outright by its "
            "count checks."
        ),
        "- Every *first* run starts from an empty Weaviate (`client.collections.delete_all()`); runs go "
        "in the order of the table. With `--code REV` the package is measured as committed at REV "
        "(extracted with `git archive` into `.tercul/bench-code/`, first on every child's `PYTHONPATH`), "
        "so that edits to the work tree during the run change nothing measured.",
        "",
        "## tercul_sync engine, per step (seconds)",
        "",
        _md(engine_steps(details)),
        "",
        "The incremental run, per step:",
        "",
        _md(engine_counts(details, "incremental")),
        "",
        "The full run after the changes, per step:",
        "",
        _md(engine_counts(details, "full")),
        "",
        "Rows changed before the incremental run:",
        "",
        _md(changes(details)),
        "",
        "## tercul_sync via Dagster: where the seconds go",
        "",
        "Seconds from the command's start. *Process start* runs from `STEP_WORKER_STARTING` to "
        "`STEP_START` (the step's process and its resources coming up); *asset body* is the step's own "
        "`duration_s` metadata (schema check, engine call, vector check). *Entity steps* runs from the "
        "first entity step asked for to the last one done; *edges step* from its asking to its end.",
        "",
        _md(dagster_runs(details)),
        "",
        _md(dagster_steps(details)),
        "",
        "## dlt, per step (seconds, from `pipeline.last_trace`)",
        "",
        _md(dlt_steps(details)),
        "",
    ]
    out.write_text("\n".join(parts))
