"""The ``tercul-sync`` command: demo data, a local Weaviate, and the demo front door."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tercul_sync.engine.settings import DEMO_DATABASE_FILE, Settings, load_settings

if TYPE_CHECKING:  # the CLI imports weaviate-client only for the commands that talk to Weaviate
    import sqlalchemy as sa
    import weaviate


def _cmd_demo_db(args: argparse.Namespace) -> int:
    from tercul_sync.devtools import demo_data
    from tercul_sync.engine import reading

    url = args.url or load_settings().effective_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = reading.make_engine(url)
    started = time.perf_counter()
    written = demo_data.generate(engine, args.rows, seed=args.seed)
    print(f"wrote demo Tercul database to {reading.safe_url(url)} in {time.perf_counter() - started:.1f}s:")
    for table, n in written.items():
        print(f"  {table:<14} {n:>9,}")
    return 0


def _cmd_weaviate(args: argparse.Namespace) -> int:
    from tercul_sync.devtools import weaviate_server

    settings = load_settings()
    if args.action == "binary":
        print(weaviate_server.ensure_binary())
        return 0
    data = Path(args.data_dir) if args.data_dir else settings.home.resolve() / "weaviate"
    if args.action == "stop":
        pid_file = data / "weaviate.pid"
        if not pid_file.exists():
            print(f"no Weaviate started from {data}")
            return 1
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()
        print("Weaviate stopped")
        return 0
    modules = [m for m in (args.modules or "").split(",") if m]
    extra = weaviate_server.module_env(modules, settings.home.resolve())
    server = weaviate_server.start(data, http_port=args.port, grpc_port=args.grpc_port, extra_env=extra)
    print(
        f"Weaviate is up at {server.url} (gRPC {server.grpc_port}), data in {data}, pid {server.process.pid}"
    )
    (data / "weaviate.pid").write_text(str(server.process.pid))
    if args.action == "run":
        try:
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
    return 0


def _run_summary(dagster_home: Path, job_name: str) -> tuple[str, list[dict[str, object]]]:
    """The last run of ``job_name`` and one row of figures per asset, from Dagster's own records."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(dg.RunsFilter(job_name=job_name), limit=1)[0]
        records = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        seen: dict[str, dict[str, object]] = {}
        for rec in records:
            mat = rec.event_log_entry.asset_materialization
            assert mat is not None  # of_type above: every record is a materialization
            name = mat.asset_key.to_user_string()
            if name not in seen:  # one event per partition, all with the step's figures
                seen[name] = {"asset": name, **{k: getattr(v, "value", v) for k, v in mat.metadata.items()}}
        return run.status.value, list(seen.values())


def print_summary(status: str, rows: list[dict[str, object]]) -> None:
    header = (
        f"{'entity type':<12} {'rows read':>10} {'written':>9} {'unchanged':>10} {'failed':>7} "
        f"{'embedded':>9} {'reused':>7} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['asset']:<12} {r.get('rows_read', 0):>10,} {r.get('objects_written', 0):>9,} "
            f"{r.get('objects_unchanged', 0):>10,} {r.get('objects_failed', 0):>7,} "
            f"{r.get('texts_embedded', 0):>9,} {r.get('embeddings_reused', 0):>7,} "
            f"{r.get('duration_s', 0):>8.2f}"
        )
    edges = next((r for r in rows if r["asset"] == "edges"), None)
    if edges:
        skipped = {
            k.removeprefix("skipped_"): v
            for k, v in edges.items()
            if k.startswith("skipped_") and k != "skipped_sample_ids"
        }
        print(
            f"edges: {edges.get('edges_read', 0):,} live edges read, "
            f"{edges.get('edges_valid', 0):,} valid; skipped: {skipped}"
        )
    print(f"run status: {status}")


def _cmd_demo(args: argparse.Namespace) -> int:
    """Demo data on SQLite, a local Weaviate, the full_sync job, and its summary."""
    from tercul_sync.devtools import weaviate_server

    settings = load_settings()
    home = settings.home.resolve()
    env = {**os.environ, "TERCUL_SYNC_HOME": str(home)}  # the run, started from home, finds the same state
    # Vectors from the local model, on short texts so that the demo stays quick on two cores.
    env.setdefault("TERCUL_SYNC_VECTORIZER", "client")
    env.setdefault("TERCUL_SYNC_EMBED_MAX_CHARS", "400")
    # Passages only when asked: the local model embeds about 1.5 passages a second on two cores, and
    # the demo's long bodies (300 KB, one work in 997) make hundreds of them: minutes, not seconds.
    env.setdefault("TERCUL_SYNC_PASSAGES", "true" if args.passages else "false")
    db_path = home / DEMO_DATABASE_FILE
    if settings.database_url is None and (args.fresh or not db_path.exists()):
        _cmd_demo_db(argparse.Namespace(url=settings.demo_database_url, rows=args.rows, seed=7))
    server = None
    if not weaviate_server.is_ready(settings.weaviate_url):
        if "WEAVIATE_URL" in os.environ:
            print(f"WEAVIATE_URL={settings.weaviate_url} does not answer", file=sys.stderr)
            return 2
        print("starting a local Weaviate (built from its Go module the first time)...")
        if args.fresh:
            shutil.rmtree(home / "weaviate", ignore_errors=True)
        server = weaviate_server.start(home / "weaviate")
        env.update(WEAVIATE_URL=server.url, WEAVIATE_GRPC_PORT=str(server.grpc_port))
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():  # local SQLite storage, said explicitly
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    env["DAGSTER_HOME"] = str(dagster_home)
    try:
        cmd = [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "tercul_sync.definitions",
            "-j",
            "full_sync",
        ]
        print("running:", " ".join(cmd[2:]))
        started = time.perf_counter()
        log = home / "last-demo-run.log"
        with log.open("w") as fh:
            proc = subprocess.run(cmd, env=env, cwd=home, stdout=fh, stderr=subprocess.STDOUT)
        print(f"full_sync finished in {time.perf_counter() - started:.1f}s (Dagster's log: {log})\n")
        status, rows = _run_summary(dagster_home, "full_sync")
        print_summary(status, rows)
        if env["TERCUL_SYNC_PASSAGES"] != "true":
            print("passages: off in the demo (--passages splits long bodies and embeds them: minutes)")
        if proc.returncode == 0:
            query = "winter river"
            print(f'\nsearch: tercul-sync search "{query}" --limit 5')
            os.environ.update(
                {
                    k: env[k]
                    for k in ("WEAVIATE_URL", "WEAVIATE_GRPC_PORT", "TERCUL_SYNC_VECTORIZER")
                    if k in env
                }
            )
            _cmd_search(
                argparse.Namespace(query=query, type=None, limit=5, alpha=0.5, json=False, passages=False)
            )
        return proc.returncode
    finally:
        if server is not None:
            server.stop()


def _connect(settings: Settings) -> weaviate.WeaviateClient:
    """A client for the configured Weaviate (URL, gRPC port, API key, CA bundle from the settings)."""
    from tercul_sync.engine import weaviate_client

    key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    return weaviate_client.connect(
        settings.weaviate_url,
        settings.weaviate_grpc_port,
        key,
        settings.weaviate_timeout_seconds,
        ca_bundle=settings.weaviate_ca_bundle,
    )


def _cmd_search(args: argparse.Namespace) -> int:
    """A hybrid query over the copy, as readers of Tercul's search would run it."""
    import json

    from tercul_sync.engine.embedding import make_embedder
    from tercul_sync.engine.registry import ENTITIES, entity
    from tercul_sync.engine.search import search, search_passages

    settings = load_settings()
    entities = [entity(args.type)] if args.type else list(ENTITIES)
    client = _connect(settings)
    try:
        embedder = make_embedder(settings) if settings.vectorizer == "client" else None
        keyword_only = settings.vectorizer not in ("client", "weaviate")
        if args.passages:
            hits = search_passages(client, args.query, args.limit, args.alpha, embedder, keyword_only)
        else:
            hits = search(client, entities, args.query, args.limit, args.alpha, embedder, keyword_only)
    finally:
        client.close()
    if args.json:
        print(json.dumps([h.as_json() for h in hits], ensure_ascii=False, indent=2))
        return 0
    for n, h in enumerate(hits, 1):
        by = f"  by {', '.join(h.authors)}" if h.authors else ""
        print(f"{n:>2}. {h.score:6.3f}  {h.collection:<11} {h.source_id:>8}  {h.title[:70]}{by}")
        if h.passage is not None:
            print(f"      passage {h.position}: {' '.join(h.passage.split())[:160]}")
    if not hits:
        print("no hits")
    return 0


def _cmd_embed_serve(args: argparse.Namespace) -> int:
    """Serve the local model as an OpenAI-compatible embeddings endpoint, in the foreground."""
    from tercul_sync.devtools.embedding_server import EmbeddingServer

    server = EmbeddingServer(args.host, args.port)
    print(f"embeddings at {server.url}/v1/embeddings (model {server.embedder.model_id})", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    """Rebuild collections behind their aliases, here and now (the rebuild_collections job's work)."""
    from tercul_sync.engine import reading
    from tercul_sync.engine.rebuild import RebuildError, rebuild
    from tercul_sync.engine.registry import sync_order
    from tercul_sync.engine.writing import SyncContext

    settings = load_settings()
    names = [e.collection for e in sync_order()] if args.all else args.collections
    client = _connect(settings)
    try:
        ctx = SyncContext(reading.make_engine(settings.effective_database_url), client, settings)
        report = rebuild(ctx, names, keep_old=args.keep_old)
    except RebuildError as exc:
        print(f"rebuild stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(report.summary())
    return 0


def _cmd_enqueue(args: argparse.Namespace) -> int:
    """Launch a job on the Dagster deployment at TERCUL_SYNC_DAGSTER_URL; print the run id (and its end)."""
    from tercul_sync.trigger import (
        SyncTrigger,
        TriggerError,
        enqueue_edge_sync,
        enqueue_entity_sync,
        enqueue_full_sync,
        enqueue_rows,
    )

    try:
        if args.what == "entity":
            run_id = enqueue_entity_sync(args.collection)
        elif args.what == "edges":
            run_id = enqueue_edge_sync(args.batch_size, args.offset)
        elif args.what == "full":
            run_id = enqueue_full_sync()
        else:
            run_id = enqueue_rows(args.collection, args.ids)
        print(run_id, flush=True)
        if not args.wait:
            return 0
        outcome = SyncTrigger().wait(run_id, args.timeout)
    except (TriggerError, TimeoutError) as exc:
        print(f"tercul-sync enqueue: {exc}", file=sys.stderr)
        return 2
    print(outcome.status)
    return 0 if outcome.succeeded else 1


def _cmd_config_docs(args: argparse.Namespace) -> int:
    """Print the settings table that docs/configuration.md holds."""
    from tercul_sync.engine.settings import configuration_table

    print(configuration_table(), end="")
    return 0


def _on_database(command: str, url: str | None, action: Callable[[sa.Engine], list[str]]) -> int:
    """Run ``action`` on the database (``url``, else ``TERCUL_DATABASE_URL``) and print the lines it
    returns; a ``ValueError`` is the command's error."""
    from tercul_sync.engine import reading

    engine = reading.make_engine(url or load_settings().effective_database_url)
    try:
        for line in action(engine):
            print(line)
    except ValueError as exc:
        print(f"tercul-sync {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    """Create (or drop) the PostgreSQL expression indexes on ``(id % n, id)`` (docs/deployment.md)."""
    from tercul_sync.engine import shard_index

    shards = args.shards or load_settings().shards
    return _on_database(
        "index", args.url, lambda engine: shard_index.create_shard_indexes(engine, shards, drop=args.drop)
    )


def _cmd_delete_log(args: argparse.Namespace) -> int:
    """Install (or drop, or report on) the delete log's table and triggers (docs/incremental.md)."""
    from tercul_sync.engine import delete_log

    def act(engine: sa.Engine) -> list[str]:
        done = [] if args.status else delete_log.install(engine, drop=args.drop, grant_to=args.grant)
        return [*done, f"delete log: {delete_log.status(engine)}"]

    return _on_database("delete-log", args.url, act)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tercul-sync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sync a demo database into a local Weaviate and print a summary")
    p.add_argument(
        "--rows", type=int, default=500, help="entity rows in the demo database (edges come on top)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="regenerate the demo database and empty the local Weaviate"
    )
    p.add_argument(
        "--passages",
        action="store_true",
        help="also split long bodies into passages and embed them (minutes on two cores)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("demo-db", help="write a deterministic, messy Tercul database")
    p.add_argument("--url", help="SQLAlchemy URL (default: TERCUL_DATABASE_URL, else the demo SQLite file)")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_demo_db)

    p = sub.add_parser("weaviate", help="find or build the server binary, or start a local server")
    p.add_argument(
        "action",
        choices=["binary", "start", "stop", "run"],
        help="binary: print its path (building it if needed); start: in the background; "
        "stop: what start started; run: in the foreground",
    )
    p.add_argument("--data-dir")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--modules", help="vectorizer modules to enable, e.g. text2vec-openai (comma separated)")
    p.set_defaults(func=_cmd_weaviate)

    p = sub.add_parser("search", help="hybrid search over the Weaviate copy")
    p.add_argument("query")
    p.add_argument("--type", help="one entity type (collection name), e.g. Work; default: all")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5, help="0: keywords only, 1: vectors only")
    p.add_argument("--json", action="store_true", help="a JSON list of hits")
    p.add_argument(
        "--passages", action="store_true", help="search passages of long texts; show each hit's parent"
    )
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "embed-serve", help="serve the local model as an OpenAI-compatible embeddings endpoint"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_embed_serve)

    p = sub.add_parser(
        "enqueue",
        help="launch a sync on the Dagster deployment at TERCUL_SYNC_DAGSTER_URL and print the run id",
    )
    what = p.add_subparsers(dest="what", required=True)
    from tercul_sync.engine.registry import ENTITIES

    types = [e.collection for e in ENTITIES]
    q = what.add_parser("entity", help="one entity type over every shard (the job sync_<type>)")
    q.add_argument("collection", choices=types)
    q = what.add_parser("edges", help="the edges: all of them, or one window of edge rows (sync_edges)")
    q.add_argument("--batch-size", type=int, help="edge rows in the window, in id order (default: all)")
    q.add_argument("--offset", type=int, default=0, help="first edge row of the window, from 0")
    what.add_parser("full", help="every entity type, then the edges and passages (full_sync)")
    q = what.add_parser("rows", help="exactly these rows of one entity type, now")
    q.add_argument("collection", choices=types)
    q.add_argument("ids", type=int, nargs="+")
    for q in what.choices.values():
        q.add_argument("--wait", action="store_true", help="wait for the run; exit 0 only if it succeeded")
        q.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.set_defaults(func=_cmd_enqueue)

    p = sub.add_parser("rebuild", help="rebuild collections behind their aliases (a new vector definition)")
    p.add_argument("collections", nargs="*", help="e.g. Work; the collections that reference them come along")
    p.add_argument("--all", action="store_true", help="every collection")
    p.add_argument("--keep-old", action="store_true", help="keep the old versions instead of dropping them")
    p.set_defaults(func=_cmd_rebuild)

    p = sub.add_parser("config-docs", help="print the table of every setting (docs/configuration.md)")
    p.set_defaults(func=_cmd_config_docs)
    p = sub.add_parser(
        "index", help="create PostgreSQL indexes on (id %% shards, id), so each shard reads only its rows"
    )
    p.add_argument("--shards", type=int, help="the shard count (default: TERCUL_SYNC_SHARDS)")
    p.add_argument("--url", help="the database (default: TERCUL_DATABASE_URL)")
    p.add_argument("--drop", action="store_true", help="drop that shard count's indexes instead")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser(
        "delete-log",
        help="install triggers that log rows deleted outright, so incremental runs need not search for them",
    )
    p.add_argument("--url", help="the database, as its tables' owner (default: TERCUL_DATABASE_URL)")
    p.add_argument("--grant", metavar="ROLE", help="let the sync's role read and prune the log")
    p.add_argument("--drop", action="store_true", help="remove the triggers, their functions and the log")
    p.add_argument("--status", action="store_true", help="only say whether the log is installed and readable")
    p.set_defaults(func=_cmd_delete_log)

    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
