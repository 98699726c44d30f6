"""Searching the copy: a hybrid (BM25 and vector) query over the registry's collections.

In ``client`` mode the query is embedded here with the same embedder as the
objects (e5's ``query:`` prefix for the local model) and compared with every
named vector of a collection; in ``weaviate`` mode the server's module embeds
it. Hits of several collections are merged by rank, then score. Works also show their
authors' names, read through the ``authors`` references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import weaviate
from weaviate.classes.query import Filter, MetadataQuery, QueryReference

from tercul_sync.engine.embedding import Embedder
from tercul_sync.engine.registry import (
    PASSAGE,
    PASSAGE_TEXT,
    SOURCE_ID_PROPERTY,
    EntityType,
    entity,
    object_uuid,
    relations_from,
)

TITLE_PROPERTIES = ("title", "name")


@dataclass(frozen=True)
class Hit:
    collection: str
    source_id: int
    score: float
    title: str
    authors: list[str] = field(default_factory=list)
    passage: str | None = None  # passage searches: the matching passage's text and position
    position: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _title(props: Mapping[str, Any]) -> str:
    for name in TITLE_PROPERTIES:
        if props.get(name):
            return str(props[name])
    return ""


def _query(
    client: weaviate.WeaviateClient,
    e: EntityType,
    query: str,
    limit: int,
    alpha: float,
    query_vector: list[float] | None,
    keyword_only: bool,
    refs: Any,
) -> Any:
    """BM25 alone, or a hybrid query against every named vector of ``e`` (given ``query_vector`` or not)."""
    col = client.collections.use(e.collection)
    metadata = MetadataQuery(score=True)
    if keyword_only:
        return col.query.bm25(query=query, limit=limit, return_metadata=metadata, return_references=refs)
    names = [v.name for v in e.vectors]
    vector: Any = {n: query_vector for n in names} if query_vector is not None and names else None
    return col.query.hybrid(
        query=query,
        alpha=alpha,
        vector=vector,
        target_vector=names or None,
        limit=limit,
        return_metadata=metadata,
        return_references=refs,
    )


def search_collection(
    client: weaviate.WeaviateClient,
    e: EntityType,
    query: str,
    limit: int,
    alpha: float,
    query_vector: list[float] | None,
    keyword_only: bool = False,
) -> list[Hit]:
    """Hybrid search in one collection; ``query_vector`` is given when vectors are our own (client mode).

    ``keyword_only``: the collections have no vectors of ours (BM25 alone).
    """
    authors = any(r.name == "authors" for r in relations_from(e.collection))
    refs = [QueryReference(link_on="authors", return_properties=["name"])] if authors else None
    result = _query(client, e, query, limit, alpha, query_vector, keyword_only, refs)
    hits = []
    for o in result.objects:
        linked = (o.references or {}).get("authors")
        names_of_authors = sorted(str(a.properties.get("name", "")) for a in linked.objects) if linked else []
        hits.append(
            Hit(
                collection=e.collection,
                # An INT property: the client types property values as the union of every kind.
                source_id=int(cast("int | None", o.properties.get(SOURCE_ID_PROPERTY)) or 0),
                score=float(o.metadata.score or 0.0),
                title=_title(o.properties),
                authors=names_of_authors,
            )
        )
    return hits


def search(
    client: weaviate.WeaviateClient,
    entities: list[EntityType],
    query: str,
    limit: int = 10,
    alpha: float = 0.5,
    embedder: Embedder | None = None,
    keyword_only: bool = False,
) -> list[Hit]:
    """The best ``limit`` hits over ``entities``, by score."""
    query_vector = embedder.embed_query(query) if embedder is not None else None
    # Hybrid scores are normalised within each collection's result, so they do not compare across
    # collections: hits are merged by rank (every collection's first, then every second, ...), and by
    # score within a rank.
    ranked = [
        (rank, h)
        for e in entities
        for rank, h in enumerate(
            search_collection(client, e, query, limit, alpha, query_vector, keyword_only)
        )
    ]
    return [h for _, h in sorted(ranked, key=lambda rh: (rh[0], -rh[1].score))][:limit]


def search_passages(
    client: weaviate.WeaviateClient,
    query: str,
    limit: int = 10,
    alpha: float = 0.5,
    embedder: Embedder | None = None,
    keyword_only: bool = False,
) -> list[Hit]:
    """The passages that match best, each with its parent work or translation (one hit per parent)."""
    query_vector = embedder.embed_query(query) if embedder is not None else None
    result = _query(client, PASSAGE, query, limit * 3, alpha, query_vector, keyword_only, None)
    hits: dict[tuple[str, int], Hit] = {}
    for o in result.objects:
        props = o.properties
        key = (str(props.get("parent_collection")), int(cast("int", props.get("parent_id") or 0)))
        if key in hits:
            continue  # the best passage of each parent
        hits[key] = Hit(
            collection=key[0],
            source_id=key[1],
            score=float(o.metadata.score or 0.0),
            title="",
            passage=str(props.get(PASSAGE_TEXT) or ""),
            position=int(cast("int", props.get("position") or 0)),
        )
    best = list(hits.values())[:limit]
    titles = _parent_titles(client, [(h.collection, h.source_id) for h in best])
    return [replace(h, title=titles.get((h.collection, h.source_id), "")) for h in best]


def _title_properties(collection: str) -> list[str]:
    columns = {c.name for c in entity(collection).columns}
    return [p for p in TITLE_PROPERTIES if p in columns]


def _parent_titles(
    client: weaviate.WeaviateClient, parents: list[tuple[str, int]]
) -> dict[tuple[str, int], str]:
    """Titles of parent objects, read by id (a multi-target reference cannot be followed in one query)."""
    out: dict[tuple[str, int], str] = {}
    for collection in sorted({c for c, _ in parents}):
        ids = [object_uuid(collection, i) for c, i in parents if c == collection]
        found = client.collections.use(collection).query.fetch_objects(
            filters=Filter.by_id().contains_any(ids),
            limit=len(ids),
            return_properties=[*_title_properties(collection), SOURCE_ID_PROPERTY],
        )
        for o in found.objects:
            out[(collection, int(cast("int", o.properties.get(SOURCE_ID_PROPERTY) or 0)))] = _title(
                o.properties
            )
    return out
