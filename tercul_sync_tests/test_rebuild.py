"""Rebuilding collections behind their aliases, against real PostgreSQL and Weaviate and the local model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
import weaviate
from weaviate.classes.query import QueryReference

from tercul_sync.defs.rebuild import rebuild_collections
from tercul_sync.devtools.cli import main as cli_main
from tercul_sync.devtools.weaviate_server import LocalWeaviate
from tercul_sync.engine import reading, runs
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.rebuild import RebuildError, RebuildPlan, members, rebuild
from tercul_sync.engine.registry import PASSAGE_COLLECTION, entity, sync_order
from tercul_sync.engine.settings import Settings, load_settings
from tercul_sync.engine.weaviate_schema import SchemaMismatchError, ensure_schema, resolve, version_of
from tercul_sync.engine.writing import SyncContext
from tercul_sync_tests.helpers import resources

NOW = datetime(2024, 5, 1, tzinfo=UTC)
ALL = {"all": reading.Shard(0, 1)}
WORKS = {
    1: ("The Whale Hunt", "A sea captain chases a white whale across the ocean."),
    2: ("Bread of the Siege", "A family survives hunger in a besieged city in winter."),
    3: ("The Orchard Letters", "Two lovers write letters about apple trees in spring."),
    4: ("Stars Over the Desert", "An astronomer maps the night sky from a caravan."),
}
TRANSLATIONS = {
    10: (1, "es", "La caza de la ballena"),
    11: (2, "ru", "Хлеб осады"),
    12: (1, "fr", "La baleine"),
}


@pytest.mark.unit
def test_a_rebuild_takes_every_collection_that_references_what_it_rebuilds():
    assert members(["Translation"]) == ["Translation", PASSAGE_COLLECTION]
    assert members(["Book"]) == ["Book"]
    assert members(["Work"]) == ["Work", "Translation", "Book", PASSAGE_COLLECTION]
    assert members(["Work"], passages=False) == ["Work", "Translation", "Book"]
    assert set(members(["Author"])) == {"Author", "Work", "Translation", "Book", PASSAGE_COLLECTION}
    assert members(["Category"])[:2] == ["Category", "Work"]  # Category references itself, Work references it
    with pytest.raises(RebuildError, match="unknown collections \\['Wrok'\\]"):
        members(["Wrok"])


@pytest.mark.unit
def test_version_numbers():
    assert version_of("Work", "Work") == 0  # a plain collection from before aliases
    assert version_of("Work", "Work_v1") == 1
    assert version_of("Work", "Work_v12") == 12


def _make_db(url: str) -> sa.Engine:
    engine = reading.make_engine(url)
    reading.METADATA.create_all(engine)
    stamps = {"created_at": NOW, "updated_at": NOW}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(reading.table_for(entity("Work"))),
            [
                {"id": i, "title": t, "summary": s, "body": s * 2, "original_language": "en", **stamps}
                for i, (t, s) in WORKS.items()
            ],
        )
        conn.execute(
            sa.insert(reading.table_for(entity("Translation"))),
            [
                {"id": i, "work_id": w, "language": lang, "title": t, "body": f"{t}. {t}.", **stamps}
                for i, (w, lang, t) in TRANSLATIONS.items()
            ],
        )
        conn.execute(
            sa.insert(reading.table_for(entity("Author"))),
            [{"id": 1, "name": "Ishmael Writer", "biography": "A sailor.", **stamps}],
        )
        edge: dict[str, Any] = {"deleted_at": None, **stamps}
        conn.execute(
            sa.insert(reading.edges_table()),
            [
                {"id": 1, "source_table": "works", "source_id": 1, "relation": "authors", **edge}
                | {"target_table": "authors", "target_id": 1},
                *(
                    {"id": 10 + i, "source_table": "translations", "source_id": i, **edge}
                    | {"relation": "translation_of", "target_table": "works", "target_id": w}
                    for i, (w, _, _) in TRANSLATIONS.items()
                ),
            ],
        )
    return engine


def _sync_all(ctx: SyncContext) -> None:
    ensure_schema(ctx.client, ctx.settings)
    for e in sync_order():
        runs.run_entity(ctx, e, ALL, runs.FULL, {})
    runs.run_edges(ctx, ALL, runs.FULL, {})
    runs.run_passages(ctx, ALL, runs.FULL, {})


def _named_vectors(client: weaviate.WeaviateClient, collection: str) -> dict[int, set[str]]:
    return {
        int(o.properties["source_id"]): {k for k, v in (o.vector or {}).items() if k != "default" and v}
        for o in client.collections.use(collection).iterator(include_vector=True)
    }


def _exact(ctx: SyncContext) -> None:
    for e in sync_order():
        report = check_parity(ctx.db, ctx.client, e, list(ALL.values()), ctx.settings)
        assert report.exact, report.describe()


@pytest.mark.services
def test_a_rebuild_changes_the_vectors_behind_the_alias_and_readers_never_see_a_gap(
    pg_database: str, weaviate_client: weaviate.WeaviateClient
) -> None:
    engine = _make_db(pg_database)
    plain = SyncContext(engine, weaviate_client, load_settings(vectorizer="none"))
    _sync_all(plain)
    assert resolve(weaviate_client, "Work") == "Work_v1"  # every collection is behind an alias
    before = {n: weaviate_client_count(weaviate_client, n) for n in ("Work", "Translation", "Passage")}
    assert before["Work"] == len(WORKS) and before["Passage"] >= len(WORKS)

    vectors: Settings = load_settings(vectorizer="client")
    with pytest.raises(SchemaMismatchError, match="needs \\['profile'\\]: run `tercul-sync rebuild Author`"):
        ensure_schema(weaviate_client, vectors)  # named vectors cannot be added in place

    seen_during: dict[str, Any] = {}

    def while_rebuilding(plan: RebuildPlan) -> None:
        # The new versions are full; readers of the aliases still get the old collections.
        seen_during["collection"] = weaviate_client.collections.use("Work").config.get().name
        seen_during["count"] = weaviate_client_count(weaviate_client, "Work")
        seen_during["vectors"] = _named_vectors(weaviate_client, "Work")
        seen_during["new_vectors"] = _named_vectors(weaviate_client, plan.new["Work"])

    ctx = SyncContext(engine, weaviate_client, vectors)
    everything = [e.collection for e in sync_order()]
    report = rebuild(ctx, everything, before_swap=while_rebuilding)

    assert report.plan.new == {n: f"{n}_v2" for n in [*everything, "Passage"]}
    assert seen_during["collection"] == "Work_v1" and seen_during["count"] == len(WORKS)
    assert all(not v for v in seen_during["vectors"].values())  # the old collection: no named vectors
    assert all(v == {"title", "body"} for v in seen_during["new_vectors"].values())
    assert report.swapped
    # The gate before the swap read every object of each new version (it does not trust the digests
    # the build just wrote).
    assert [(p.method, p.exact) for p in report.parity] == [("walk", True)] * len(report.parity) != []
    # Afterwards the aliases answer from the new versions, with as many objects, and the old are gone.
    assert {n: resolve(weaviate_client, n) for n in before} == {
        "Work": "Work_v2",
        "Translation": "Translation_v2",
        "Passage": "Passage_v2",
    }
    assert {n: weaviate_client_count(weaviate_client, n) for n in before} == before
    assert report.objects_after == report.objects_before
    assert not weaviate_client.collections.exists("Work_v1")
    assert _named_vectors(weaviate_client, "Work") == {i: {"title", "body"} for i in WORKS}
    assert _named_vectors(weaviate_client, "Translation") == {i: {"text"} for i in TRANSLATIONS}
    _exact(ctx)
    # References follow: a translation's reference reaches its work in the new version.
    found = weaviate_client.collections.use("Translation").query.fetch_objects(
        return_references=QueryReference(link_on="translation_of", return_properties=["title"]), limit=10
    )
    titles = {
        o.properties["source_id"]: [r.properties["title"] for r in o.references["translation_of"].objects]
        for o in found.objects
    }
    assert titles == {i: [WORKS[w][0]] for i, (w, _, _) in TRANSLATIONS.items()}

    # Rebuilding Translation alone (and Passage, which references it) embeds nothing again:
    # every vector's model and text are unchanged, so they are copied from the old versions.
    again = rebuild(ctx, ["Translation"])
    assert again.plan.new == {"Translation": "Translation_v3", "Passage": "Passage_v3"}
    translation = again.entity_runs["Translation"].report
    assert (translation.embeddings.texts, translation.embeddings_reused) == (0, len(TRANSLATIONS))
    assert again.passages_embedded == 0 and again.passages_reused == before["Passage"]
    assert resolve(weaviate_client, "Work") == "Work_v2"  # untouched
    _exact(ctx)


@pytest.mark.services
def test_a_rebuild_that_does_not_verify_leaves_the_aliases_alone(
    pg_database: str,
    weaviate_client: weaviate.WeaviateClient,
    weaviate_server_proc: LocalWeaviate,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = _make_db(pg_database)
    ctx = SyncContext(engine, weaviate_client, load_settings(vectorizer="none"))
    _sync_all(ctx)

    def refuse_translations(
        client: weaviate.WeaviateClient, collection: str, items: list[Any]
    ) -> dict[int, str]:
        if collection.startswith("Translation_v"):
            return {i: "refused by the test" for i in range(len(items))}
        return wc.send_objects(client, collection, items)

    failing = SyncContext(engine, weaviate_client, ctx.settings, send=refuse_translations)
    with pytest.raises(
        RebuildError, match="objects of Translation failed during the rebuild, aliases unchanged"
    ):
        rebuild(failing, ["Translation"])
    assert resolve(weaviate_client, "Translation") == "Translation_v1"
    assert weaviate_client_count(weaviate_client, "Translation") == len(TRANSLATIONS)
    # The next rebuild, from the command line, replaces what the failed one left, and succeeds.
    monkeypatch.setenv("TERCUL_DATABASE_URL", pg_database)
    monkeypatch.setenv("WEAVIATE_URL", weaviate_server_proc.url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(weaviate_server_proc.grpc_port))
    monkeypatch.setenv("TERCUL_SYNC_VECTORIZER", "none")
    assert cli_main(["rebuild", "Translation"]) == 0
    assert "Translation: Translation_v1 -> Translation_v2" in capsys.readouterr().out
    assert resolve(weaviate_client, "Translation") == "Translation_v2"
    _exact(ctx)
    assert cli_main(["rebuild", "Wrok"]) == 1
    assert "unknown collections ['Wrok']" in capsys.readouterr().err

    # The same through Dagster: the rebuild_collections job.
    result = rebuild_collections.execute_in_process(
        run_config={"ops": {"rebuild_collections_op": {"config": {"collections": ["Book"]}}}},
        resources=resources(pg_database, weaviate_server_proc),
    )
    assert result.success
    (materialization,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert materialization.event_specific_data.metadata["collections"].value == {"Book": "Book_v2"}
    assert resolve(weaviate_client, "Book") == "Book_v2"


def weaviate_client_count(client: weaviate.WeaviateClient, collection: str) -> int:
    return wc.count_objects(client, collection)
