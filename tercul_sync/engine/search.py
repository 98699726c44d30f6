"""Searching the copy: a hybrid (BM25 and vector) query over the registry's collections.

In ``client`` mode the query is embedded here with the same embedder as the
objects (e5's ``query:`` prefix for the local model) and compared with every
named vector of a collection; in ``weaviate`` mode the server's module embeds
it. Hits of several collections are merged by rank, then score. Works also show their
authors' names, read through the ``authors`` references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import weaviate
from weaviate.classes.query import MetadataQuery, QueryReference

from tercul_sync.engine.embedding import Embedder
from tercul_sync.engine.registry import SOURCE_ID_PROPERTY, EntityType, relations_from

TITLE_PROPERTIES = ("title", "name")


@dataclass(frozen=True)
class Hit:
    collection: str
    source_id: int
    score: float
    title: str
    authors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _title(e: EntityType, props: Mapping[str, Any]) -> str:
    for name in TITLE_PROPERTIES:
        if props.get(name):
            return str(props[name])
    return ""


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
    names = [] if keyword_only else [v.name for v in e.vectors]
    authors = any(r.name == "authors" for r in relations_from(e.collection))
    refs = [QueryReference(link_on="authors", return_properties=["name"])] if authors else None
    col = client.collections.use(e.collection)
    vector: Any = {n: query_vector for n in names} if query_vector is not None and names else None
    if keyword_only:
        result = col.query.bm25(
            query=query, limit=limit, return_metadata=MetadataQuery(score=True), return_references=refs
        )
    else:
        result = col.query.hybrid(
            query=query,
            alpha=alpha,
            vector=vector,
            target_vector=names or None,
            limit=limit,
            return_metadata=MetadataQuery(score=True),
            return_references=refs,
        )
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
                title=_title(e, o.properties),
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
