"""The one declarative description of what tercul_sync copies.

Everything else (the SQL tables the reader selects from, the Weaviate
collections, the Dagster assets, the demo data generator) is generated from
``ENTITIES`` and ``RELATIONS``. Adding a Tercul table is one ``EntityType``
entry; adding a relationship is one ``Relation`` entry.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache


class Kind(Enum):
    """A column's logical type; it fixes both the SQL type and the Weaviate type."""

    TEXT = "text"
    VARCHAR = "varchar"
    CHAR = "char"
    INT = "int"
    BIGINT = "bigint"
    BOOL = "bool"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = True
    length: int | None = None
    unique: bool = False


@dataclass(frozen=True)
class VectorSpec:
    """A named vector of a collection and the text properties that feed it, in order."""

    name: str
    source_properties: tuple[str, ...]


@dataclass(frozen=True)
class PassageSpec:
    """A long text property split into passages (``engine/chunking.py``), each an object of ``Passage``.

    ``language`` names the parent property copied as the passage's language;
    ``copied`` the parent properties copied for filtering.
    """

    property: str
    language: str
    copied: tuple[str, ...] = ()
    max_chars: int = 1000
    overlap_chars: int = 150


@dataclass(frozen=True)
class EntityType:
    """One Tercul table and the Weaviate collection that mirrors it."""

    collection: str
    table: str
    columns: tuple[Column, ...]
    vectors: tuple[VectorSpec, ...] = ()
    passages: tuple[PassageSpec, ...] = ()
    soft_delete_column: str = "deleted_at"

    @property
    def property_columns(self) -> tuple[Column, ...]:
        """Columns stored as Weaviate properties: own columns plus the GORM timestamps."""
        return (*self.columns, *GORM_PROPERTY_COLUMNS)


@dataclass(frozen=True)
class Relation:
    """A relationship from the ``edges`` table, stored as a cross-reference property."""

    source: str  # collection name of the source entity
    name: str  # the edge's ``relation`` value and the reference property's name
    target: str  # collection name of the target entity


_DNS_NAMESPACE = uuid.NAMESPACE_DNS.bytes


@lru_cache(maxsize=1 << 15)
def object_uuid(collection: str, row_id: int) -> str:
    """The contract's deterministic object id: re-runs replace instead of duplicating.

    ``weaviate.util.generate_uuid5(f"{collection}:{row_id}")``, i.e. ``uuid.uuid5`` in the DNS
    namespace, computed here without building a ``UUID`` object: 1.2 µs instead of 3.1, and it
    runs once per object and once per edge (a test pins it to ``generate_uuid5``). The small cache
    keeps often-referenced targets (an author of many works): 32,768 entries, about 9 MB; the
    cache of 262,144 it replaces held 70 MB once a catalog was that large.
    """
    return uuid5_text(f"{collection}:{row_id}")


def uuid5_text(name: str) -> str:
    """``str(weaviate.util.generate_uuid5(name))`` without building a ``UUID`` object (3.5 µs instead
    of 12.8): also the id of every passage, once per passage in each sync and each parity check."""
    digest = bytearray(hashlib.sha1(_DNS_NAMESPACE + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _text(name: str, nullable: bool = True, unique: bool = False) -> Column:
    return Column(name, Kind.TEXT, nullable, unique=unique)


def _varchar(name: str, length: int, nullable: bool = True, unique: bool = False) -> Column:
    return Column(name, Kind.VARCHAR, nullable, length=length, unique=unique)


def _int(name: str) -> Column:
    return Column(name, Kind.INT)


def _bigint(name: str) -> Column:
    return Column(name, Kind.BIGINT)


GORM_PROPERTY_COLUMNS = (
    Column("created_at", Kind.TIMESTAMP, nullable=False),
    Column("updated_at", Kind.TIMESTAMP, nullable=False),
)
SOURCE_ID_PROPERTY = "source_id"  # the row id; `id` is reserved in Weaviate

ENTITIES: tuple[EntityType, ...] = (
    EntityType(
        "Author",
        "authors",
        (
            _text("name", nullable=False),
            _text("biography"),
            _int("birth_year"),
            _int("death_year"),
            Column("country_code", Kind.CHAR, length=2),
            _varchar("language", 8),
        ),
        (VectorSpec("profile", ("name", "biography")),),
    ),
    EntityType(
        "Work",
        "works",
        (
            _text("title", nullable=False),
            _varchar("original_language", 8, nullable=False),
            _text("genre"),
            _text("summary"),
            _text("body"),
            _int("published_year"),
            Column("is_public_domain", Kind.BOOL),
        ),
        (VectorSpec("title", ("title", "summary")), VectorSpec("body", ("body",))),
        (PassageSpec("body", language="original_language", copied=("is_public_domain",)),),
    ),
    EntityType(
        "Translation",
        "translations",
        (
            _bigint("work_id"),
            _varchar("language", 8, nullable=False),
            _text("title"),
            _text("body"),
            _text("translator_note"),
            _text("status"),
            Column("published_at", Kind.TIMESTAMP),
        ),
        (VectorSpec("text", ("title", "body")),),
        (PassageSpec("body", language="language", copied=("work_id",)),),
    ),
    EntityType(
        "Book",
        "books",
        (
            _text("title", nullable=False),
            _varchar("isbn", 17, unique=True),
            _bigint("publisher_id"),
            _int("published_year"),
            _varchar("language", 8),
        ),
        (VectorSpec("title", ("title",)),),
    ),
    EntityType(
        "Publisher",
        "publishers",
        (_text("name", nullable=False), Column("country_code", Kind.CHAR, length=2)),
        (VectorSpec("name", ("name",)),),
    ),
    EntityType(
        "Tag",
        "tags",
        (_text("name", nullable=False, unique=True), _text("slug")),
        (VectorSpec("name", ("name",)),),
    ),
    EntityType(
        "Category",
        "categories",
        (_text("name", nullable=False), _text("description"), _bigint("parent_id")),
        (VectorSpec("name", ("name", "description")),),
    ),
)

RELATIONS: tuple[Relation, ...] = (
    Relation("Work", "authors", "Author"),
    Relation("Work", "tags", "Tag"),
    Relation("Work", "categories", "Category"),
    Relation("Translation", "translation_of", "Work"),
    Relation("Translation", "translators", "Author"),
    Relation("Book", "contains", "Work"),
    Relation("Book", "publisher", "Publisher"),
    Relation("Category", "parent", "Category"),
)

EDGES_TABLE = "edges"
PASSAGE_COLLECTION = "Passage"  # one object per passage of a long text (see PassageSpec)
PASSAGE_TEXT = "text"  # the property holding a passage's text
PASSAGE_PARENT_ID = "parent_id"  # the parent row's id: passages are summed over ranges of it

_BY_COLLECTION = {e.collection: e for e in ENTITIES}


def entity(collection: str) -> EntityType:
    """Look an entity type up by collection name, with an error that lists the known ones."""
    try:
        return _BY_COLLECTION[collection]
    except KeyError:
        raise KeyError(f"unknown entity type {collection!r}; known: {', '.join(_BY_COLLECTION)}") from None


def relations_from(collection: str) -> tuple[Relation, ...]:
    """The relations whose references live on ``collection``'s objects."""
    return tuple(r for r in RELATIONS if r.source == collection)


def relations_to(collection: str) -> tuple[Relation, ...]:
    """The relations that point at ``collection``."""
    return tuple(r for r in RELATIONS if r.target == collection)


def relations_of_edge(source_table: str, relation: str) -> tuple[Relation, ...]:
    """The registry relations an ``edges`` row (by source table and relation name) may stand for."""
    return tuple(r for r in RELATIONS if r.name == relation and entity(r.source).table == source_table)


def sync_order() -> list[EntityType]:
    """Entity types with every reference target before its sources (self-references aside)."""
    done: list[EntityType] = []
    pending = list(ENTITIES)
    while pending:
        ready = [
            e
            for e in pending
            if all(
                r.target in {d.collection for d in done} or r.target == e.collection
                for r in relations_from(e.collection)
            )
        ]
        if not ready:
            raise ValueError(f"relations form a cycle among {[e.collection for e in pending]}")
        done += ready
        pending = [e for e in pending if e not in ready]
    return done


def edge_sources() -> list[EntityType]:
    """Entity types whose objects carry references, in name order."""
    return [entity(c) for c in sorted({r.source for r in RELATIONS})]


def edge_targets() -> list[EntityType]:
    """Entity types that references point at, in name order."""
    return [entity(c) for c in sorted({r.target for r in RELATIONS})]


def passage_parents() -> list[EntityType]:
    """Entity types whose long texts are split into passages."""
    return [e for e in ENTITIES if e.passages]


def _passage_columns() -> tuple[Column, ...]:
    copied: dict[str, Column] = {}
    for e in passage_parents():
        by_name = {c.name: c for c in e.columns}
        for spec in e.passages:
            copied.update({name: by_name[name] for name in spec.copied})
    return (
        _text("parent_collection", nullable=False),
        _bigint(PASSAGE_PARENT_ID),
        _text("parent_key", nullable=False),
        _text("property", nullable=False),
        _int("position"),
        _text(PASSAGE_TEXT, nullable=False),
        _varchar("language", 8),
        *(Column(c.name, c.kind, length=c.length) for c in copied.values()),
    )


# The Passage collection, described like an entity type so that the schema code serves it too
# (it has no table: its objects come from the parents' long texts).
PASSAGE = EntityType(
    PASSAGE_COLLECTION, "", _passage_columns(), (VectorSpec("text", (PASSAGE_TEXT,)),), soft_delete_column=""
)
PASSAGE_PARENT_REFERENCE = "parent"


def validate_registry(
    entities: tuple[EntityType, ...] = ENTITIES, relations: tuple[Relation, ...] = RELATIONS
) -> None:
    """Fail at import time on a registry mistake rather than half way through a sync."""
    names = [e.collection for e in entities]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate collection names in registry: {names}")
    known = set(names)
    for e in entities:
        props = [c.name for c in e.property_columns] + [SOURCE_ID_PROPERTY]
        if len(set(props)) != len(props):
            raise ValueError(f"{e.collection}: duplicate property names {props}")
        for c in e.columns:
            if c.kind in (Kind.VARCHAR, Kind.CHAR) and not c.length:
                raise ValueError(f"{e.collection}.{c.name}: {c.kind.value} needs a length")
        text_columns = {c.name for c in e.columns if c.kind in (Kind.TEXT, Kind.VARCHAR, Kind.CHAR)}
        vector_names = [v.name for v in e.vectors]
        if len(set(vector_names)) != len(vector_names):
            raise ValueError(f"{e.collection}: duplicate vector names {vector_names}")
        columns = {c.name for c in e.columns}
        for ps in e.passages:
            needed = [ps.property, ps.language, *ps.copied]
            if ps.property not in text_columns or any(n not in columns for n in needed):
                raise ValueError(f"{e.collection} passages: unknown or non-text columns in {needed}")
        for v in e.vectors:
            unknown = [p for p in v.source_properties if p not in text_columns]
            if not v.source_properties or unknown:
                raise ValueError(
                    f"{e.collection} vector {v.name!r}: source properties must be text columns, got {unknown}"
                )
    for r in relations:
        if r.source not in known or r.target not in known:
            raise ValueError(f"relation {r.source}.{r.name} -> {r.target} names an unknown collection")
        clash = {c.name for c in entity(r.source).property_columns} | {SOURCE_ID_PROPERTY}
        if r.name in clash:
            raise ValueError(f"relation {r.source}.{r.name} clashes with a property of the same name")


validate_registry()
