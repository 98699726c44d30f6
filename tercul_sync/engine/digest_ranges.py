"""Which id ranges differ between the database and Weaviate, by their range digests (``digests.py``).

The two searches that full runs (``runs.py``) and the parity checks (``parity.py``) share: over
the objects of an entity collection, and over the first passages of a parent type (the marks they
carry). Each returns the ranges ``[low, high)`` whose sums differ and how many live rows matched,
or None when the differences cover more than ``max_share`` of the buckets.
"""

from __future__ import annotations

import weaviate
from sqlalchemy.engine import Engine

from tercul_sync.engine import digests, reading, weaviate_client
from tercul_sync.engine.digests import DIGEST_PROPERTY, REF_DIGEST_PROPERTY
from tercul_sync.engine.objects import REF_COUNT_PROPERTY
from tercul_sync.engine.registry import PASSAGE_PARENT_ID, EntityType, relations_from

Found = tuple[list[tuple[int, int]], int] | None  # (ranges that differ, live rows matched)


def object_ranges(
    db: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    collection: str,
    fingerprint: int,
    max_share: float,
    rows: bool = True,
    reference_counts: bool = False,
) -> Found:
    """Over every id either side holds: the rows' digests (with ``rows``) and the references'
    (and their counts, with ``reference_counts``) against the sums the objects of ``collection``
    store."""
    span = digests.covering_span(
        reading.id_bounds(db, e), weaviate_client.source_id_bounds(client, collection)
    )
    if span is None:  # no row and no object with a source_id
        return [], 0
    summed = [DIGEST_PROPERTY] if rows else []
    if relations_from(e.collection):
        summed.append(REF_DIGEST_PROPERTY)
        if reference_counts:
            summed.append(REF_COUNT_PROPERTY)
    return digests.differing_ranges(
        span,
        lambda low: reading.digest_buckets(
            db, e, fingerprint, low, rows=rows, reference_counts=reference_counts
        ),
        lambda low, high: weaviate_client.digest_between(client, collection, low, high, summed),
        max_share,
    )


def mark_ranges(
    db: Engine,
    client: weaviate.WeaviateClient,
    e: EntityType,
    passages: str,
    fingerprint: int,
    max_share: float,
) -> Found:
    """Over the rows' ids: the digests of the live parents with text (``fingerprint``:
    ``digests.passage_fingerprint``) against those their first passages in ``passages`` carry."""
    bounds = reading.id_bounds(db, e)
    if bounds is None:
        return [], 0
    firsts = weaviate_client.first_passages(e.collection, e.passages[0].property)
    with_text = reading.has_text(e, [p.property for p in e.passages])
    return digests.differing_ranges(
        (bounds[0], bounds[1] + 1),
        lambda low: reading.digest_buckets(db, e, fingerprint, low, references=False, where=with_text),
        lambda low, high: weaviate_client.digest_between(
            client, passages, low, high, prop=PASSAGE_PARENT_ID, where=firsts
        ),
        max_share,
    )
