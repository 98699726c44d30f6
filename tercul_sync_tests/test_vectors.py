"""Vectors against real PostgreSQL and Weaviate, with the real local model (multilingual-e5-small)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import weaviate

from tercul_sync.devtools import weaviate_server
from tercul_sync.devtools.cli import main as cli_main
from tercul_sync.devtools.embedding_server import EmbeddingServer
from tercul_sync.devtools.weaviate_server import LocalWeaviate
from tercul_sync.engine import reading, runs, weaviate_client
from tercul_sync.engine.embedding import EmbeddingUnavailable, OpenAIEmbedder
from tercul_sync.engine.registry import ENTITIES, entity
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema
from tercul_sync.engine.writing import SyncContext

pytestmark = pytest.mark.services

NOW = datetime(2024, 5, 1, tzinfo=UTC)
SHARDS = {"shard-0": reading.Shard(0, 2), "shard-1": reading.Shard(1, 2)}

# A labelled set: each work's nearest match for its queries is known (queries in three languages).
LABELLED = [
    (1, "The Whale Hunt", "A sea captain chases a white whale across the ocean, obsessed with revenge."),
    (2, "Bread of the Siege", "A family survives hunger in a besieged city during a long winter war."),
    (
        3,
        "The Orchard Letters",
        "Two lovers write letters about apple trees and spring blossoms in their garden.",
    ),
    (
        4,
        "Stars Over the Desert",
        "An astronomer maps the night sky from a camel caravan crossing the Sahara.",
    ),
    (5, "The Clockmaker's Son", "A boy repairs old clocks and watches in his father's workshop in Prague."),
    (6, "Songs of the Fisherman", "Poems about nets, boats and the river fish caught at dawn."),
]
QUERIES = [
    ("ballena blanca en el mar", 1),  # Spanish: white whale at sea
    ("голод в осаждённом городе зимой", 2),  # Russian: hunger in a besieged city in winter
    ("cartas de amor en el jardín", 3),  # Spanish: love letters in the garden
    ("астроном и ночное небо в пустыне", 4),  # Russian: astronomer and the night sky in the desert
    ("repairing antique clocks", 5),
]


def _make_db(url: str) -> sa.Engine:
    engine = reading.make_engine(url)
    reading.METADATA.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(reading.table_for(entity("Work"))),
            [
                {
                    "id": i,
                    "title": title,
                    "summary": summary,
                    "body": f"{summary} " * 3,
                    "original_language": "en",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for i, title, summary in LABELLED
            ],
        )
        conn.execute(
            sa.insert(reading.table_for(entity("Author"))),
            [{"id": 1, "name": "Ishmael Writer", "biography": "", "created_at": NOW, "updated_at": NOW}],
        )
    return engine


def _sync(engine: sa.Engine, client: weaviate.WeaviateClient, **settings: Any) -> list[runs.EntityRun]:
    s = load_settings(**settings)
    ensure_schema(client, s)
    ctx = SyncContext(engine, client, s)
    return [runs.run_entity(ctx, e, SHARDS, runs.FULL, {}) for e in (entity("Author"), entity("Work"))]


def _vectors(client: weaviate.WeaviateClient, collection: str) -> dict[int, dict[str, list[float]]]:
    out = {}
    for o in client.collections.use(collection).iterator(include_vector=True):
        out[int(o.properties["source_id"])] = {k: list(v) for k, v in (o.vector or {}).items()}
    return out


def test_client_mode_every_object_has_its_vectors_and_unchanged_text_is_never_re_embedded(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    engine = _make_db(pg_database)
    first = _sync(engine, weaviate_client, vectorizer="client")
    work = first[1].report
    assert work.write.written == len(LABELLED) and work.embeddings.texts == 2 * len(LABELLED)
    stored = _vectors(weaviate_client, "Work")
    assert set(stored) == {i for i, _, _ in LABELLED}
    assert all(
        set(v) == {"title", "body"} and all(len(x) == 384 for x in v.values()) for v in stored.values()
    )
    assert _vectors(weaviate_client, "Author")[1].keys() == {"profile"}

    again = _sync(engine, weaviate_client, vectorizer="client")
    assert [r.report.embeddings.texts for r in again] == [0, 0]
    assert again[1].report.write.written == 0

    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE works SET body = 'A new body about mountains', updated_at = now() WHERE id = 3")
        )
    edited = _sync(engine, weaviate_client, vectorizer="client")[1].report
    assert (edited.write.written, edited.embeddings.texts, edited.embeddings_reused) == (1, 1, 1)
    after = _vectors(weaviate_client, "Work")
    assert after[3]["title"] == stored[3]["title"]  # reused as it was
    assert after[3]["body"] != stored[3]["body"]  # re-embedded
    assert all(after[i] == stored[i] for i in stored if i != 3)


def test_search_puts_the_expected_work_first_in_several_languages(
    pg_database: str,
    weaviate_server_proc: LocalWeaviate,
    weaviate_client: weaviate.WeaviateClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = _make_db(pg_database)
    _sync(engine, weaviate_client, vectorizer="client")
    monkeypatch.setenv("TERCUL_SYNC_VECTORIZER", "client")
    monkeypatch.setenv("WEAVIATE_URL", weaviate_server_proc.url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(weaviate_server_proc.grpc_port))
    for query, expected in QUERIES:
        assert cli_main(["search", query, "--type", "Work", "--json", "--limit", "3"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert hits and {"collection", "source_id", "score", "title"} <= set(hits[0])
        assert (hits[0]["collection"], hits[0]["source_id"]) == ("Work", expected), (query, hits)


def test_an_endpoint_answering_429_and_500_is_retried_and_counted(pg_database: str) -> None:
    server = EmbeddingServer().start()
    try:
        httpx.post(f"{server.url}/fail", json={"status": 429, "times": 2})
        embedder = OpenAIEmbedder(f"{server.url}/v1", "e5", None, batch_size=8, retry_attempts=5)
        vectors = embedder.embed_passages(["one", "two", "three"])
        assert len(vectors) == 3 and len(vectors[0]) == 384
        assert embedder.stats.retries == 2 and embedder.stats.requests == 3
        httpx.post(f"{server.url}/fail", json={"status": 500, "times": 1})
        assert len(embedder.embed_passages(["four"])) == 1 and embedder.stats.retries == 3
        httpx.post(f"{server.url}/fail", json={"status": 401, "times": 1})
        with pytest.raises(EmbeddingUnavailable, match=r"/v1/embeddings failed: HTTPStatusError.*401"):
            embedder.embed_passages(["refused for good"])
    finally:
        server.stop()


def test_an_unreachable_endpoint_fails_with_a_message_that_names_it(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    engine = _make_db(pg_database)
    with pytest.raises(EmbeddingUnavailable, match=r"http://127\.0\.0\.1:9/v1/embeddings"):
        _sync(
            engine,
            weaviate_client,
            vectorizer="client",
            embedder="openai",
            embedding_url="http://127.0.0.1:9/v1",
            retry_attempts=2,
        )


def test_column_mode_reports_bad_vectors_by_row_while_batch_mates_land(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    engine = _make_db(pg_database)
    statements = [
        "ALTER TABLE works ADD COLUMN title_embedding double precision[]",
        "ALTER TABLE works ADD COLUMN body_embedding double precision[]",
        "ALTER TABLE authors ADD COLUMN profile_embedding double precision[]",
        "UPDATE authors SET profile_embedding = ARRAY[0, 0, 1]",
        "UPDATE works SET title_embedding = ARRAY[0.1, 0.2, 0.3], body_embedding = ARRAY[1, 0, 0]",
        "UPDATE works SET title_embedding = ARRAY[0.1, 0.2] WHERE id = 2",  # wrong dimension
        "UPDATE works SET body_embedding = NULL WHERE id = 5",
    ]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    work = _sync(engine, weaviate_client, vectorizer="column", vector_dimensions=3)[1].report
    failures = {f.key: f.message for f in work.write.failures}
    assert set(failures) == {2, 5}
    assert "Work row 2" in failures[2] and "2 dimensions" in failures[2]
    assert "Work row 5" in failures[5] and "NULL" in failures[5]
    stored = _vectors(weaviate_client, "Work")
    assert set(stored) == {1, 3, 4, 6}
    assert stored[1]["title"] == pytest.approx([0.1, 0.2, 0.3]) and stored[1]["body"] == [1.0, 0.0, 0.0]


def test_column_mode_names_a_missing_column(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    engine = _make_db(pg_database)
    with pytest.raises(reading.MissingColumnError, match="table authors has no column profile_embedding"):
        _sync(engine, weaviate_client, vectorizer="column", vector_dimensions=3)


def test_every_registry_vector_is_a_named_vector_of_its_collection(
    weaviate_client: weaviate.WeaviateClient,
) -> None:
    ensure_schema(weaviate_client, load_settings(vectorizer="client"))
    for e in ENTITIES:
        config = weaviate_client.collections.use(e.collection).config.get()
        assert set(config.vector_config or {}) == {v.name for v in e.vectors}, e.collection


@pytest.fixture(scope="module")
def module_weaviate(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalWeaviate, EmbeddingServer]]:
    """A Weaviate with the text2vec-openai module, whose baseURL is a local endpoint over the local model."""
    endpoint = EmbeddingServer().start()
    home = tmp_path_factory.mktemp("module-home")
    server = weaviate_server.start(
        home / "weaviate", extra_env=weaviate_server.module_env(["text2vec-openai"], home)
    )
    try:
        yield server, endpoint
    finally:
        server.stop()
        endpoint.stop()


def test_module_mode_vectors_come_from_the_server_and_unchanged_objects_cost_no_request(
    pg_database: str, module_weaviate: tuple[LocalWeaviate, EmbeddingServer]
) -> None:
    server, endpoint = module_weaviate
    engine = _make_db(pg_database)
    client = weaviate_client.connect(server.url, server.grpc_port, None, 60)
    try:
        client.collections.delete_all()
        config = {"baseURL": endpoint.url, "model": "multilingual-e5-small", "vectorizeClassName": False}
        settings = {"vectorizer": "weaviate", "weaviate_module_config": config}
        first = _sync(engine, client, **settings)
        assert [r.report.write.failed for r in first] == [0, 0]
        stored = _vectors(client, "Work")
        assert set(stored) == {i for i, _, _ in LABELLED}
        assert all(set(v) == {"title", "body"} and len(v["title"]) == 384 for v in stored.values())
        assert (
            runs.check_vectors(SyncContext(engine, client, load_settings(**settings)), [first[1].report])[
                "vectors_missing"
            ]
            == 0
        )
        served = httpx.get(f"{endpoint.url}/stats").json()
        assert served["texts"] >= 2 * len(LABELLED)
        again = _sync(engine, client, **settings)
        assert again[1].report.write.written == 0
        assert httpx.get(f"{endpoint.url}/stats").json() == served  # no request for unchanged objects
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE works SET body = 'Whales again', updated_at = now() WHERE id = 1"))
        _sync(engine, client, **settings)
        after = httpx.get(f"{endpoint.url}/stats").json()
        assert after["texts"] > served["texts"]  # the changed object was vectorized again
        assert _vectors(client, "Work")[1]["body"] != stored[1]["body"]
    finally:
        client.close()
