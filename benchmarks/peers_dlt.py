"""dlt, the peer: every Tercul entity table into Weaviate with ``sql_database``, merged on ``id``.

Runs in its own virtualenv (bench_peers.py makes it: ``.tercul/bench-venv``,
``dlt[weaviate,sqlalchemy]==1.31.0``: 1.31 has no ``sql_database`` extra, its source
needs only SQLAlchemy), so dlt's dependencies never touch
the project's pins:

    .tercul/bench-venv/bin/python benchmarks/peers_dlt.py --db-url URL --pipelines-dir DIR

The destination is configured through dlt's environment variables, as a
user would in ``config.toml`` (bench_peers.py sets them):

    DESTINATION__WEAVIATE__CREDENTIALS__URL, ...__HTTP_PORT, ...__GRPC_PORT
    DESTINATION__WEAVIATE__CONNECTION_TYPE=local
    DESTINATION__WEAVIATE__VECTORIZER=none, DESTINATION__WEAVIATE__MODULE_CONFIG={}

With no column carrying the ``x-weaviate-vectorize`` hint, dlt creates each
collection with vectorizer ``none`` anyway; setting it says so. Rows are
merged (``write_disposition="merge"``, Weaviate's only merge strategy,
``upsert``: the object id is derived from the primary key ``id``).
Soft-deleted rows are left out by a query adapter, so both tools write the
same rows. dlt writes no cross-references.
"""

from __future__ import annotations

import argparse
import json
import time

import dlt
from dlt.sources.sql_database import sql_database

TABLES = ["authors", "tags", "categories", "publishers", "works", "translations", "books"]


def live_rows_only(query, table):  # type: ignore[no-untyped-def]
    """Tercul's soft delete: a row whose ``deleted_at`` is set is not synced."""
    return query.where(table.c.deleted_at.is_(None)) if "deleted_at" in table.c else query


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--pipelines-dir", required=True)
    ap.add_argument("--dataset", default="dlt_bench")
    ap.add_argument("--tables", default=",".join(TABLES))
    args = ap.parse_args()

    started = time.perf_counter()
    source = sql_database(
        credentials=args.db_url,
        table_names=args.tables.split(","),
        query_adapter_callback=live_rows_only,
    )
    for resource in source.resources.values():
        resource.apply_hints(write_disposition="merge", primary_key="id")
    pipeline = dlt.pipeline(
        pipeline_name="tercul_dlt_bench",
        destination="weaviate",
        dataset_name=args.dataset,
        pipelines_dir=args.pipelines_dir,
    )
    info = pipeline.run(source)
    seconds = time.perf_counter() - started
    trace = pipeline.last_trace
    steps = [
        {
            "step": s.step,
            "seconds": (s.finished_at - s.started_at).total_seconds() if s.finished_at else None,
        }
        for s in trace.steps
    ]
    norm = trace.last_normalize_info
    rows = dict(norm.row_counts) if norm is not None else {}
    print(
        "BENCH-RESULT "
        + json.dumps(
            {
                "seconds_in_process": seconds,
                "steps": steps,
                "row_counts": rows,
                "has_failed_jobs": info.has_failed_jobs,
                "dlt_version": dlt.__version__,
            },
            default=str,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
