"""Passages against real PostgreSQL and Weaviate, with vectors from the real local model."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import weaviate
from weaviate.classes.query import QueryReference

from tercul_sync.engine import digests, reading, runs
from tercul_sync.engine.chunking import split_text
from tercul_sync.engine.embedding import make_embedder
from tercul_sync.engine.objects import HASH_PROPERTY
from tercul_sync.engine.parity import DIGESTS, WALK, check_passage_parity
from tercul_sync.engine.passages import passage_uuid
from tercul_sync.engine.registry import PASSAGE_COLLECTION, entity, object_uuid, passage_parents
from tercul_sync.engine.search import search_passages
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import ensure_schema, resolve
from tercul_sync.engine.writing import SyncContext

pytestmark = pytest.mark.services

SHARDS = {"shard-0": reading.Shard(0, 2), "shard-1": reading.Shard(1, 2)}
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SENTENCES = [
    "The river froze in the night and the town listened to the ice.",
    "She kept the letters in a tin box under the stairs.",
    "Nobody in the village remembered who planted the first olive tree.",
    "The train was late again, and the station master wrote it down.",
    "Snow covered the graves, the roads and the roofs alike.",
    "He counted the ships every morning from the lighthouse window.",
    "Bread was scarce that winter, but the songs were not.",
    "A crow sat on the telegraph wire and watched the soldiers pass.",
]


def _body(rng: random.Random, sentences: int) -> str:
    paragraphs, current = [], []
    for _ in range(sentences):
        current.append(rng.choice(SENTENCES))
        if rng.random() < 0.25:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    return "\n\n".join(p for p in paragraphs if p)


class Catalog:
    """A small Tercul database whose works and translations we change at will."""

    def __init__(self, url: str) -> None:
        self.engine = reading.make_engine(url)
        reading.METADATA.create_all(self.engine)
        self.clock = T0

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def insert_work(self, work_id: int, body: str | None) -> None:
        now = self.tick()
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(reading.table_for(entity("Work"))),
                {
                    "id": work_id,
                    "title": f"Work {work_id}",
                    "original_language": "en",
                    "body": body,
                    "is_public_domain": work_id % 2 == 0,
                    "created_at": now,
                    "updated_at": now,
                },
            )

    def update(self, work_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            t = reading.table_for(entity("Work"))
            conn.execute(sa.update(t).where(t.c.id == work_id).values(updated_at=self.tick(), **values))

    def hard_delete(self, work_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM works WHERE id = :i"), {"i": work_id})

    def live_bodies(self) -> dict[int, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, body FROM works WHERE deleted_at IS NULL"))
            return {i: b for i, b in rows if b and b.strip()}


def expected_passages(bodies: dict[int, str]) -> dict[str, tuple[int, int, str]]:
    """``{uuid: (parent id, position, text)}`` straight from the splitter, for live bodies."""
    [spec] = entity("Work").passages
    out = {}
    for work_id, body in bodies.items():
        for c in split_text(body, spec.max_chars, spec.overlap_chars):
            out[passage_uuid("Work", work_id, "body", c.position)] = (work_id, c.position, c.text)
    return out


def stored_passages(client: weaviate.WeaviateClient) -> dict[str, tuple[int, int, str, bool]]:
    """``{uuid: (parent id, position, text, has vector)}`` as Weaviate holds them; each passage's
    ``parent`` reference is checked to point at its parent's object."""
    col = client.collections.use(PASSAGE_COLLECTION)
    found = col.query.fetch_objects(
        limit=10_000,
        include_vector=True,
        # A multi-target reference is read by the versioned collection's name, never the alias's.
        return_references=QueryReference.MultiTarget(
            link_on="parent", target_collection=resolve(client, "Work")
        ),
    ).objects
    out = {}
    for o in found:
        p, has_vector = o.properties, bool((o.vector or {}).get("text"))
        parent_id = int(str(p["parent_id"]))
        linked = o.references["parent"].objects if o.references and "parent" in o.references else []
        assert [str(x.uuid) for x in linked] == [object_uuid("Work", parent_id)], (o.uuid, linked)
        out[str(o.uuid)] = (parent_id, int(str(p["position"])), str(p["text"]), has_vector)
    return out


def _run(ctx: SyncContext, mode: str, cursors: dict[str, Any]) -> tuple[runs.PassageReport, dict[str, Any]]:
    """The parents' own objects first, as ``incremental_sync`` runs them, then the passages.

    ``cursors`` holds both: ``{"entities": {collection: ...}, "passages": ...}``, updated in place.
    """
    entity_cursors = cursors.setdefault("entities", {})
    for e in passage_parents():
        run = runs.run_entity(ctx, e, SHARDS, mode, entity_cursors.get(e.collection, {}))
        entity_cursors[e.collection] = run.cursors
    report, cursors["passages"] = runs.run_passages(ctx, SHARDS, mode, cursors.get("passages", {}))
    return report, cursors


@pytest.fixture
def catalog(pg_database: str) -> Catalog:
    return Catalog(pg_database)


@pytest.fixture
def ctx(catalog: Catalog, weaviate_client: weaviate.WeaviateClient) -> SyncContext:
    settings = load_settings(vectorizer="client", overlap_seconds=0)
    ensure_schema(weaviate_client, settings)
    return SyncContext(catalog.engine, weaviate_client, settings)


def test_an_edit_rewrites_only_its_passages_a_shrink_deletes_the_tail_a_delete_removes_all(
    catalog: Catalog, ctx: SyncContext
) -> None:
    rng = random.Random(1)
    body = _body(rng, 60)
    catalog.insert_work(1, body)
    catalog.insert_work(2, _body(rng, 20))
    report, cursors = _run(ctx, runs.FULL, {})
    assert report.write.written == len(expected_passages(catalog.live_bodies())) > 6
    assert stored_passages(ctx.client).keys() == expected_passages(catalog.live_bodies()).keys()
    again, _ = _run(ctx, runs.FULL, {})  # nothing changed: no parent is even read (range digests)
    assert (again.write.written, again.parents_read, again.parents_matched_by_digest) == (0, 0, 2)
    forced, _ = _run(replace(ctx, force=True), runs.FULL, {})  # forced: every parent read, and written
    assert (forced.parents_read, forced.parents_matched_by_digest) == (2, 0)

    before = expected_passages({1: body})
    middle = len(body) // 2
    edited = body[:middle] + " An entirely new sentence about owls. " + body[middle:]
    catalog.update(1, body=edited)
    report, cursors = _run(ctx, runs.INCREMENTAL, cursors)
    after = expected_passages({1: edited})
    changed = {u for u, v in after.items() if before.get(u) != v}
    # The passages whose text changed, and the first, which carries the parent's mark (its vector kept).
    assert 0 < report.write.written == len(changed | {passage_uuid("Work", 1, "body", 0)}) < len(after)
    assert report.embeddings.texts == len(changed)
    assert report.parents_unchanged == 0
    assert stored_passages(ctx.client).keys() == expected_passages(catalog.live_bodies()).keys()

    catalog.update(1, body=edited[:1500])
    report, cursors = _run(ctx, runs.INCREMENTAL, cursors)
    assert report.deleted == len(after) - len(expected_passages({1: edited[:1500]}))
    assert stored_passages(ctx.client).keys() == expected_passages(catalog.live_bodies()).keys()

    catalog.update(1, deleted_at=catalog.tick())
    _run(ctx, runs.INCREMENTAL, cursors)
    assert {v[0] for v in stored_passages(ctx.client).values()} == {2}


def test_a_full_run_finds_an_edit_no_cursor_saw_and_reads_only_its_range(
    catalog: Catalog, ctx: SyncContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body changed with ``updated_at`` untouched: the next full run finds it by its range's digest
    (buckets of 8 ids here), reads that range alone, and its passages are rewritten."""
    monkeypatch.setattr(digests, "BUCKET", 8)
    rng = random.Random(3)
    for work_id in range(1, 41):
        catalog.insert_work(work_id, _body(rng, rng.randint(3, 12)))
    _run(ctx, runs.FULL, {})
    edited = catalog.live_bodies()[30] + " A late sentence about herons, written behind the cursor's back."
    with catalog.engine.begin() as conn:
        conn.execute(sa.text("UPDATE works SET body = :b WHERE id = 30"), {"b": edited})
    report, _ = _run(ctx, runs.FULL, {})
    assert report.digest_ranges_read == 1 and report.parents_read == 8  # ids 25 to 32
    assert report.parents_matched_by_digest == 32 and report.write.written >= 1
    stored = stored_passages(ctx.client)
    assert {u: v[:3] for u, v in stored.items()} == expected_passages(catalog.live_bodies())


def test_twenty_random_rounds_keep_the_passages_exactly_in_step(catalog: Catalog, ctx: SyncContext) -> None:
    rng = random.Random(20)
    next_id = 1
    for _ in range(6):
        catalog.insert_work(next_id, _body(rng, rng.randint(3, 40)))
        next_id += 1
    _, cursors = _run(ctx, runs.FULL, {})
    for round_no in range(20):
        live = sorted(catalog.live_bodies())
        action = rng.choice(["insert", "edit", "shrink", "soft", "hard", "empty"])
        if action == "insert" or not live:
            catalog.insert_work(next_id, _body(rng, rng.randint(1, 40)))
            next_id += 1
        elif action == "edit":
            work_id = rng.choice(live)
            body = catalog.live_bodies()[work_id]
            at = rng.randrange(len(body))
            catalog.update(work_id, body=body[:at] + rng.choice(SENTENCES) + body[at:])
        elif action == "shrink":
            work_id = rng.choice(live)
            body = catalog.live_bodies()[work_id]
            catalog.update(work_id, body=body[: rng.randint(1, len(body))])
        elif action == "soft":
            catalog.update(rng.choice(live), deleted_at=catalog.tick())
        elif action == "hard":
            catalog.hard_delete(rng.choice(live))
        else:
            catalog.update(rng.choice(live), body="   ")
        _, cursors = _run(ctx, runs.INCREMENTAL, cursors)
        expected = expected_passages(catalog.live_bodies())
        stored = stored_passages(ctx.client)
        assert stored.keys() == expected.keys(), (round_no, action)
        assert all(stored[u][:3] == expected[u] for u in expected), (round_no, action)
        assert all(v[3] for v in stored.values()), (round_no, action)  # every passage has its vector
        assert check_passage_parity(catalog.engine, ctx.client, list(SHARDS.values()), ctx.settings).exact, (
            round_no,
            action,
        )


def test_passage_parity_finds_missing_orphan_and_stale_passages(catalog: Catalog, ctx: SyncContext) -> None:
    rng = random.Random(7)
    for work_id in (1, 2, 3):
        catalog.insert_work(work_id, _body(rng, 30))
    _run(ctx, runs.FULL, {})
    shards = list(SHARDS.values())
    quick = check_passage_parity(catalog.engine, ctx.client, shards, ctx.settings)
    walked = check_passage_parity(catalog.engine, ctx.client, shards, ctx.settings, walk=True)
    assert quick.exact and walked.exact and (quick.method, walked.method) == (DIGESTS, WALK)
    assert (quick.rows, quick.objects) == (walked.rows, walked.objects) and quick.rows > 3
    passages = ctx.client.collections.use(PASSAGE_COLLECTION)
    by_parent = {}
    for uuid, (parent_id, position, _, _) in stored_passages(ctx.client).items():
        by_parent.setdefault(parent_id, {})[position] = uuid
    passages.data.delete_by_id(by_parent[1][1])  # missing
    passages.data.update(uuid=by_parent[2][0], properties={HASH_PROPERTY: "edited out of band"})  # stale
    catalog.hard_delete(3)  # its passages are orphans until a sweep
    report = check_passage_parity(catalog.engine, ctx.client, shards, ctx.settings)
    assert report.method == WALK  # the digests saw a difference: the walk names it
    assert (report.counts["missing"], report.counts["stale"]) == (1, 1)
    assert report.counts["orphan"] == len(by_parent[3]) and report.samples["orphan"] == [3]
    assert report.samples["missing"] == [1] and report.samples["stale"] == [2]
    _run(replace(ctx, force=True), runs.FULL, {})  # a forced full run mends all three
    assert check_passage_parity(catalog.engine, ctx.client, shards, ctx.settings).exact


def test_passage_parity_by_digests_sees_each_damage_alone_but_a_hash_edited_by_hand(
    catalog: Catalog, ctx: SyncContext
) -> None:
    """Each damage on its own sends the digests to a walk (which names it), but for a passage's
    content hash edited in Weaviate: only a walk sees that, as for entity objects (docs/parity.md)."""
    rng = random.Random(8)
    for work_id in (1, 2, 3, 4):
        catalog.insert_work(work_id, _body(rng, 30))
    _run(ctx, runs.FULL, {})
    shards = list(SHARDS.values())
    passages = ctx.client.collections.use(PASSAGE_COLLECTION)

    def uuid_of(parent: int, position: int) -> str:
        return passage_uuid("Work", parent, "body", position)

    def check(walk: bool = False) -> Any:
        return check_passage_parity(catalog.engine, ctx.client, shards, ctx.settings, walk=walk)

    def mend() -> None:
        _run(replace(ctx, force=True), runs.FULL, {})
        assert check().exact and check().method == DIGESTS

    passages.data.delete_by_id(uuid_of(1, 2))  # a passage missing: fewer than the first one records
    assert check().method == WALK and check().counts["missing"] == 1
    mend()
    extra = dict(passages.query.fetch_object_by_id(uuid_of(2, 1)).properties)
    passages.data.insert(properties={**extra, "position": 99}, uuid=uuid_of(2, 99))  # a tail left over
    assert check().method == WALK and check().counts["orphan"] == 1
    mend()
    catalog.update(3, body=_body(rng, 30))  # a text changed, no sync since: its mark is out of date
    assert check().method == WALK and not check().exact
    mend()
    catalog.hard_delete(4)  # a parent gone, its passages still there
    assert check().method == WALK and check().counts["orphan"] > 0
    mend()
    passages.data.update(uuid=uuid_of(1, 1), properties={HASH_PROPERTY: "edited out of band"})
    assert check().exact and check().method == DIGESTS  # the blind spot
    assert check(walk=True).counts["stale"] == 1


def test_a_sentence_from_deep_inside_a_long_body_finds_its_work(catalog: Catalog, ctx: SyncContext) -> None:
    rng = random.Random(3)
    needle = "The cartographer drew a map of the moon's hidden valleys with silver ink."
    for work_id in range(1, 5):
        parts = [_body(rng, 40) for _ in range(3)]
        if work_id == 3:
            parts.insert(2, needle)  # deep inside: well past the first passages
        catalog.insert_work(work_id, "\n\n".join(parts))
    _run(ctx, runs.FULL, {})
    query = "a silver map of valleys on the moon"
    hits = search_passages(ctx.client, query, limit=3, embedder=make_embedder(ctx.settings))
    assert hits and (hits[0].collection, hits[0].source_id) == ("Work", 3), hits
    assert hits[0].position is not None and hits[0].position > 2 and "cartographer" in (hits[0].passage or "")
    indexes = {
        p.name: (p.index_filterable, p.index_searchable, p.index_range_filters)
        for p in ctx.client.collections.use("Passage").config.get().properties
    }
    assert indexes["text"] == (False, True, False)  # searched, never filtered
    assert indexes["parent_key"] == (True, False, False)  # matched whole, never searched
    assert indexes["parent_id"] == (True, False, True)  # summed over ranges of parents
    assert indexes["position"] == (True, False, False)
