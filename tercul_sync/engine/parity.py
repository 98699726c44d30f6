"""Parity: does Weaviate hold exactly what the database says it should? Both sides as frames, diffed.

For one collection, the database side is every live row's ``(id, updated_at,
references it should carry)``; the Weaviate side is every object's
``(source_id, updated_at, sync_ref_count)``. pandas joins them on the id:

- **missing**: a live row without an object;
- **orphan**: an object whose row is gone or soft-deleted;
- **stale**: an object whose ``updated_at`` is not the row's (GORM sets it on
  every write, so a missed update shows here without reading any text);
- **wrong references**: an object carrying another number of references than
  the live edges between live rows give it.

It works shard by shard on the database side (one query per shard, in id
order); the Weaviate side is one cursor walk kept as three numeric columns,
about 20 bytes an object. Duplicates cannot exist: object ids are
deterministic, so a second copy of a row would be the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import weaviate
from sqlalchemy.engine import Engine

from tercul_sync.engine import reading
from tercul_sync.engine.changes import valid_reference_counts
from tercul_sync.engine.objects import HASH_PROPERTY, REF_COUNT_PROPERTY, as_utc
from tercul_sync.engine.passages import build_passages
from tercul_sync.engine.registry import (
    PASSAGE_COLLECTION,
    SOURCE_ID_PROPERTY,
    EntityType,
    passage_parents,
    relations_from,
)
from tercul_sync.engine.reports import MAX_SAMPLE

if TYPE_CHECKING:  # imported where used: pandas costs half a second at every step process's start
    import pandas as pd

KINDS = ("missing", "orphan", "stale", "wrong_references")


@dataclass
class ParityReport:
    collection: str
    rows: int = 0  # live rows in scope
    objects: int = 0  # objects in scope
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})

    @property
    def exact(self) -> bool:
        return not any(self.counts.values())

    def as_metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "objects": self.objects,
            **self.counts,
            "sample_ids": {k: v for k, v in self.samples.items() if v},
        }

    def describe(self) -> str:
        off = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.counts.items() if n)
        return f"{self.collection}: " + (off or "exact") + f" ({self.rows} live rows, {self.objects} objects)"


_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)


def _us(value: Any) -> int:
    """A timestamp as integer microseconds since the epoch (both sides compare exactly; any year
    PostgreSQL or SQLite hands back fits in 64 bits)."""
    if value is None:
        return 0
    return (as_utc(value) - _EPOCH) // _MICROSECOND


def weaviate_side(client: weaviate.WeaviateClient, collection: str) -> pd.DataFrame:
    """``source_id`` (index), ``updated_us``, ``ref_count`` of every object, from one cursor walk."""
    import pandas as pd

    ids, stamps, refs = [], [], []
    walk = client.collections.use(collection).iterator(
        return_properties=[SOURCE_ID_PROPERTY, "updated_at", REF_COUNT_PROPERTY], cache_size=5_000
    )
    for o in walk:
        p = o.properties
        ids.append(int(cast("int", p.get(SOURCE_ID_PROPERTY) or 0)))
        stamps.append(_us(p.get("updated_at")))
        refs.append(int(cast("int", p.get(REF_COUNT_PROPERTY) or 0)))
    columns = {"updated_us": stamps, "ref_count": refs}
    return pd.DataFrame(columns, index=pd.Index(ids, name="id", dtype="int64"), dtype="int64")


def database_side(
    engine: Engine, e: EntityType, shard: reading.Shard, expected_refs: dict[int, int]
) -> pd.DataFrame:
    """``id`` (index), ``updated_us``, ``ref_count`` of the shard's live rows."""
    import pandas as pd

    t = reading.table_for(e)
    q = (
        sa.select(t.c.id, t.c.updated_at)
        .where(t.c[e.soft_delete_column].is_(None), shard.clause(t.c.id))
        .order_by(t.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    ids = [r[0] for r in rows]
    return pd.DataFrame(
        {"updated_us": [_us(r[1]) for r in rows], "ref_count": [expected_refs.get(i, 0) for i in ids]},
        index=pd.Index(ids, name="id", dtype="int64"),
        dtype="int64",
    )


def diff(db: pd.DataFrame, wv: pd.DataFrame, report: ParityReport) -> None:
    """Add the differences of one shard's two frames to ``report``."""
    joined = db.add_suffix("_db").join(wv.add_suffix("_wv"), how="outer", sort=True)
    in_db, in_wv = joined["updated_us_db"].notna(), joined["updated_us_wv"].notna()
    both = in_db & in_wv
    found = {
        "missing": joined.index[in_db & ~in_wv],
        "orphan": joined.index[~in_db & in_wv],
        "stale": joined.index[both & (joined["updated_us_db"] != joined["updated_us_wv"])],
        "wrong_references": joined.index[both & (joined["ref_count_db"] != joined["ref_count_wv"])],
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
    collection: str | None = None,
) -> ParityReport:
    """Compare one collection (by default the entity's alias) with its table over ``shards``."""
    report = ParityReport(collection or e.collection)
    wv = weaviate_side(client, collection or e.collection)
    expected_refs = valid_reference_counts(engine, e.collection) if relations_from(e.collection) else {}
    for shard in shards:
        mine = wv if shard.count == 1 else wv[(wv.index % shard.count) == shard.index]
        diff(database_side(engine, e, shard, expected_refs), mine, report)
    return report


def check_passage_parity(
    engine: Engine, client: weaviate.WeaviateClient, shards: Sequence[reading.Shard]
) -> ParityReport:
    """``Passage`` against the live parents' texts: each passage they give (id and content hash)
    against those stored. Missing: a passage the text gives that is not stored; orphan: a stored
    passage no live text gives (its parent gone, or its text shorter); stale: another content.
    Samples are parent ids. The texts are cut again here, page by page; the stored side is one
    cursor walk of ids, hashes and parent ids (about 150 bytes a passage)."""
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
        for shard in shards:
            for page in reading.iter_live_pages(engine, e, [shard], 500):
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
