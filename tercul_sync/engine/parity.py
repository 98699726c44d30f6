"""Parity: does Weaviate hold exactly what the database says it should? Both sides as frames, diffed.

For one collection, the database side is every live row's ``(id, digest, references it should
carry, their digest)``; the Weaviate side is every object's ``(source_id, sync_digest,
sync_ref_count, sync_ref_digest)``. The digests are those of the range digests (``digests.py``):
the database computes a row's from its columns, so no text crosses the wire and no date is
parsed. pandas joins the two sides on the id:

- **missing**: a live row without an object;
- **orphan**: an object whose row is gone or soft-deleted;
- **stale**: an object whose ``sync_digest`` is not the one the row (and the settings that shape
  its object, such as the vectorizer) gives now: a row changed since its object was written,
  whether or not ``updated_at`` moved;
- **wrong references**: an object carrying another number of references, or other targets, than
  the live edges between live rows give it.

Two ways to build the frames, both ending in the same object-by-object diff:

- **by digests** (the default over every shard): the sums the range digests keep are compared
  first, one aggregate per range on each side, halving ranges that differ down to ``BUCKET`` ids
  (``digests.differing_ranges``); only the ranges that differ are read, object by object. The
  sums also add ``sync_ref_count``, so each of the four kinds is seen. Where the differences are
  everywhere, or some object has no ``source_id`` (Weaviate's total count says so), it walks.
  Its blind spot is the range digests': changes that cancel out in a range's count and sums.
- **by a walk** (``walk=True``, the nightly ``parity`` job's, or a subset of the shards): the
  database side shard by shard (one query per shard, in id order), the Weaviate side one cursor
  walk kept as four numeric columns, about 32 bytes an object. It reads every object, so it does
  not rely on the range machinery that the sync itself uses.

Duplicates cannot exist: object ids are deterministic, so a second copy of a row would be the
same object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import weaviate
from sqlalchemy.engine import Engine

from tercul_sync.engine import digest_ranges, digests, reading, weaviate_client
from tercul_sync.engine.digests import DIGEST_PROPERTY, REF_DIGEST_PROPERTY
from tercul_sync.engine.objects import HASH_PROPERTY, REF_COUNT_PROPERTY
from tercul_sync.engine.passages import build_passages
from tercul_sync.engine.reconcile import WALK_SHARE
from tercul_sync.engine.registry import (
    PASSAGE_COLLECTION,
    SOURCE_ID_PROPERTY,
    EntityType,
    passage_parents,
)
from tercul_sync.engine.reports import MAX_SAMPLE
from tercul_sync.engine.settings import Settings
from tercul_sync.engine.weaviate_schema import resolve

if TYPE_CHECKING:  # imported where used: pandas costs half a second at every step process's start
    import pandas as pd

KINDS = ("missing", "orphan", "stale", "wrong_references")
FRAME_COLUMNS = ("digest", "ref_count", "ref_digest")  # both sides' frames, indexed by row id
WEAVIATE_COLUMNS = (DIGEST_PROPERTY, REF_COUNT_PROPERTY, REF_DIGEST_PROPERTY)  # the same, as stored
WALK, DIGESTS = "walk", "digests"  # how a report's frames were built
IdFilter = Callable[["sa.ColumnElement[Any]"], "sa.ColumnElement[bool]"]


@dataclass
class ParityReport:
    collection: str
    rows: int = 0  # live rows in scope
    objects: int = 0  # objects in scope
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    method: str = WALK  # WALK or DIGESTS
    ranges_read: int = 0  # by digests: the id ranges whose sums differed, read object by object

    @property
    def exact(self) -> bool:
        return not any(self.counts.values())

    def as_metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "objects": self.objects,
            **self.counts,
            "method": self.method,
            **({"ranges_read": self.ranges_read} if self.method == DIGESTS else {}),
            "sample_ids": {k: v for k, v in self.samples.items() if v},
        }

    def describe(self) -> str:
        off = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.counts.items() if n)
        return f"{self.collection}: " + (off or "exact") + f" ({self.rows} live rows, {self.objects} objects)"


def weaviate_side(client: weaviate.WeaviateClient, collection: str) -> pd.DataFrame:
    """``source_id`` (index), ``digest``, ``ref_count``, ``ref_digest`` of every object, from one
    cursor walk (a property an object lacks counts as 0)."""
    walk = client.collections.use(collection).iterator(
        return_properties=[SOURCE_ID_PROPERTY, *WEAVIATE_COLUMNS], cache_size=5_000
    )
    return _stored_frame(o.properties for o in walk)


def weaviate_range(client: weaviate.WeaviateClient, collection: str, low: int, high: int) -> pd.DataFrame:
    """``weaviate_side`` of the objects whose ``source_id`` is in ``[low, high)``."""
    names = [SOURCE_ID_PROPERTY, *WEAVIATE_COLUMNS]
    return _stored_frame(weaviate_client.properties_between(client, collection, low, high, names))


def _stored_frame(objects: Any) -> pd.DataFrame:
    import pandas as pd

    ids: list[int] = []
    columns: list[list[int]] = [[], [], []]
    for p in objects:
        ids.append(int(cast("int", p.get(SOURCE_ID_PROPERTY) or 0)))
        for column, name in zip(columns, WEAVIATE_COLUMNS, strict=True):
            column.append(int(cast("int", p.get(name) or 0)))
    return pd.DataFrame(
        dict(zip(FRAME_COLUMNS, columns, strict=True)),
        index=pd.Index(ids, name="id", dtype="int64"),
        dtype="int64",
    )


def database_side(
    engine: Engine,
    e: EntityType,
    ids_in: IdFilter,
    fingerprint: int,
    expected_refs: dict[int, tuple[int, int]],
) -> pd.DataFrame:
    """``id`` (index), ``digest``, ``ref_count``, ``ref_digest`` of the live rows whose id passes
    ``ids_in`` (a shard's or a range's clause), as their objects should hold them
    (``expected_refs``: ``reading.reference_sums``)."""
    import pandas as pd

    t = reading.table_for(e)
    digest = digests.object_digest_sql(e, t, fingerprint)
    q = sa.select(t.c.id, digest).where(t.c[e.soft_delete_column].is_(None), ids_in(t.c.id)).order_by(t.c.id)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    ids = [r[0] for r in rows]
    refs = [expected_refs.get(i, (0, 0)) for i in ids]
    columns = [[r[1] for r in rows], [n for n, _ in refs], [d for _, d in refs]]
    return pd.DataFrame(
        dict(zip(FRAME_COLUMNS, columns, strict=True)),
        index=pd.Index(ids, name="id", dtype="int64"),
        dtype="int64",
    )


def diff(db: pd.DataFrame, wv: pd.DataFrame, report: ParityReport) -> None:
    """Add the differences of one shard's two frames to ``report``."""
    joined = db.add_suffix("_db").join(wv.add_suffix("_wv"), how="outer", sort=True)
    in_db, in_wv = joined["digest_db"].notna(), joined["digest_wv"].notna()
    both = in_db & in_wv
    references_differ = (joined["ref_count_db"] != joined["ref_count_wv"]) | (
        joined["ref_digest_db"] != joined["ref_digest_wv"]
    )
    found = {
        "missing": joined.index[in_db & ~in_wv],
        "orphan": joined.index[~in_db & in_wv],
        "stale": joined.index[both & (joined["digest_db"] != joined["digest_wv"])],
        "wrong_references": joined.index[both & references_differ],
    }
    report.rows += int(in_db.sum())
    report.objects += int(in_wv.sum())
    for kind, ids in found.items():
        report.counts[kind] += len(ids)
        room = MAX_SAMPLE - len(report.samples[kind])
        report.samples[kind].extend(int(i) for i in ids[: max(room, 0)])


def check_parity(
    engine: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    shards: Sequence[reading.Shard],
    settings: Settings,
    collection: str | None = None,
    walk: bool = False,
) -> ParityReport:
    """Compare one collection (by default the entity's alias) with its table over ``shards``: by
    digests when ``shards`` cover every id, by a walk when asked (``walk``) or when they do not.

    ``settings`` are those the objects are written with: they shape the digests (the vectorizer,
    for one). The digests are computed by PostgreSQL or SQLite (``digests.DIALECTS``); on another
    database this raises ``ValueError``.
    """
    if engine.dialect.name not in digests.DIALECTS:
        raise ValueError(
            f"parity needs the row digests, which {engine.dialect.name} cannot compute here: "
            f"use one of {', '.join(digests.DIALECTS)}"
        )
    name = collection or e.collection
    fingerprint = digests.fingerprint(e, settings)
    if not walk and reading.covers_every_id(shards):
        report = _by_digests(engine, client, e, name, fingerprint)
        if report is not None:
            return report
    return _by_walk(engine, client, e, name, shards, fingerprint)


def _by_walk(
    engine: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    collection: str,
    shards: Sequence[reading.Shard],
    fingerprint: int,
) -> ParityReport:
    report = ParityReport(collection)
    # The references' sums cost the database a digest per edge (seconds at a million rows): they
    # are computed while Weaviate is walked.
    with ThreadPoolExecutor(1, thread_name_prefix="tercul-parity-refs") as pool:
        sums = pool.submit(reading.reference_sums, engine, e)
        wv = weaviate_side(client, collection)
        expected_refs = sums.result()
    for shard in shards:
        mine = wv if shard.count == 1 else wv[(wv.index % shard.count) == shard.index]
        diff(database_side(engine, e, shard.clause, fingerprint, expected_refs), mine, report)
    return report


def _ids_between(low: int, high: int) -> IdFilter:
    return lambda column: sa.and_(column >= low, column < high)


def _by_digests(
    engine: Engine, client: weaviate.WeaviateClient, e: EntityType, collection: str, fingerprint: int
) -> ParityReport | None:
    """The report from the ranges whose sums differ, read object by object; None when a walk is
    needed (differences everywhere, or objects outside every range)."""
    report = ParityReport(collection, method=DIGESTS)
    found = digest_ranges.object_ranges(
        engine, client, e, collection, fingerprint, WALK_SHARE, reference_counts=True
    )
    if found is None:
        return None
    ranges, matched = found
    for low, high in ranges:
        for a in range(low, high, digests.BUCKET):
            b = min(a + digests.BUCKET, high)
            refs = reading.reference_sums(engine, e, (a, b))
            db = database_side(engine, e, _ids_between(a, b), fingerprint, refs)
            diff(db, weaviate_range(client, collection, a, b), report)
    report.ranges_read = len(ranges)
    # Outside the ranges read, every range matched: as many objects as rows.
    report.rows += matched
    report.objects += matched
    if weaviate_client.count_objects(client, collection) != report.objects:
        return None  # objects without a source_id, in no range: only a walk sees them
    return report


def check_passage_parity(
    engine: Engine,
    client: weaviate.WeaviateClient,
    shards: Sequence[reading.Shard],
    settings: Settings,
    walk: bool = False,
) -> ParityReport:
    """``Passage`` against the live parents' texts.

    By a walk (``walk``, or when ``shards`` do not cover every id): each passage the texts give (id
    and content hash) against those stored. Missing: a passage the text gives that is not stored;
    orphan: a stored passage no live text gives (its parent gone, or its text shorter); stale:
    another content. Samples are parent ids. The texts are cut again here, page by page; the stored
    side is one cursor walk of ids, hashes and parent ids (about 150 bytes a passage).

    By digests first (the default): for each parent type, the marks' digests on the parents' first
    passages against the parents' rows, by ranges of ids (as the passages step compares them), and
    the passages stored against the number the first passages record. All equal: the check is
    exact without cutting a text. Anything different: it walks, and the walk names what is off.
    """
    if not walk and reading.covers_every_id(shards) and engine.dialect.name in digests.DIALECTS:
        report = _passages_by_digests(engine, client, settings)
        if report is not None:
            return report
    return _passages_by_walk(engine, client, shards)


def _passages_by_digests(
    engine: Engine, client: weaviate.WeaviateClient, settings: Settings
) -> ParityReport | None:
    """An exact report if every measure agrees; None at the first that does not."""
    report = ParityReport(PASSAGE_COLLECTION, method=DIGESTS)
    for e in passage_parents():
        spec = e.passages[0]  # the first passage of this text carries the parent's mark
        parents = _parents_matched(engine, client, e, settings)
        # First passages outside the rows' ids (their parent gone past the last id): in no range.
        if (
            parents is None
            or weaviate_client.count_first_passages(client, e.collection, prop=spec.property) != parents
        ):
            return None
        stored, recorded = weaviate_client.passage_counts(
            client, PASSAGE_COLLECTION, e.collection, spec.property
        )
        if stored != recorded:
            return None
        report.rows += recorded
        report.objects += stored
    return report


def _parents_matched(
    engine: Engine, client: weaviate.WeaviateClient, e: EntityType, settings: Settings
) -> int | None:
    """How many live parents of ``e`` with text have a first passage marked as their row gives
    now, when every range of ids agrees; None when one does not."""
    target = resolve(client, e.collection) or e.collection  # what the parent references name
    fingerprint = digests.passage_fingerprint(e, settings, target)
    found = digest_ranges.mark_ranges(engine, client, e, PASSAGE_COLLECTION, fingerprint, 0.0)
    return None if found is None or found[0] else found[1]


def _passages_by_walk(
    engine: Engine, client: weaviate.WeaviateClient, shards: Sequence[reading.Shard]
) -> ParityReport:
    report = ParityReport(PASSAGE_COLLECTION)
    stored: dict[str, tuple[str, int]] = {}
    for o in client.collections.use(PASSAGE_COLLECTION).iterator(
        return_properties=[HASH_PROPERTY, "parent_id"], cache_size=5_000
    ):
        stored[str(o.uuid)] = (
            str(o.properties.get(HASH_PROPERTY)),
            int(cast("int", o.properties["parent_id"])),
        )
    found: dict[str, list[int]] = {k: [] for k in KINDS}
    for e in passage_parents():
        # Only what the passages are made of: no other column, and no row digest to compute.
        needed = {name for p in e.passages for name in (p.property, p.language, *p.copied)}
        # Every shard in one stream: one scan of the table (``iter_live_pages``).
        for page in reading.iter_live_pages(engine, e, shards, 500, columns=sorted(needed)):
            for row in page:
                for spec in e.passages:
                    for p in build_passages(e, spec, row):
                        report.rows += 1
                        have = stored.pop(p.uuid, None)
                        if have is None:
                            found["missing"].append(row["id"])
                        elif have[0] != p.properties[HASH_PROPERTY]:
                            found["stale"].append(row["id"])
    found["orphan"] = [parent for _, parent in stored.values()]
    report.objects = report.rows - len(found["missing"]) + len(found["orphan"])
    for kind, ids in found.items():
        report.counts[kind] = len(ids)
        report.samples[kind] = sorted(set(ids))[:MAX_SAMPLE]
    return report
