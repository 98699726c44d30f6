"""Weaviate collections generated from the registry, each behind an alias.

Readers and writers use the registry's names (``Work``); each is an alias of
a versioned collection (``Work_v1``) so that a collection can be rebuilt
behind it (``engine/rebuild.py``). A reference property must name the
versioned collection it points at: Weaviate refuses an alias there.

Missing collections are created; an existing one with a compatible schema is
reused (missing properties are added); an incompatible one stops the sync
with an error that names the collection and the property. A collection made
before aliases existed here (a plain ``Work``) is used as it is, until a
rebuild moves it behind an alias.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import weaviate
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    ReferenceProperty,
    ReferencePropertyMultiTarget,
    Tokenization,
)
from weaviate.collections.classes.config import CollectionConfig
from weaviate.collections.classes.config_vectors import _VectorConfigCreate
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateInvalidInputError

from tercul_sync.engine.digests import DIGEST_PROPERTY, REF_DIGEST_PROPERTY
from tercul_sync.engine.objects import (
    HASH_PROPERTY,
    PARENT_HASH_PROPERTY,
    PASSAGE_COUNT_PROPERTY,
    REF_COUNT_PROPERTY,
)
from tercul_sync.engine.registry import (
    ENTITIES,
    PASSAGE,
    PASSAGE_COLLECTION,
    PASSAGE_PARENT_ID,
    PASSAGE_PARENT_REFERENCE,
    PASSAGE_TEXT,
    RELATIONS,
    SOURCE_ID_PROPERTY,
    EntityType,
    Kind,
    Relation,
    passage_parents,
    sync_order,
)
from tercul_sync.engine.replication import replication_config, replication_problems
from tercul_sync.engine.settings import Settings
from tercul_sync.engine.vectors import VECTOR_HASH_PROPERTY

WEAVIATE_TYPES = {
    Kind.TEXT: DataType.TEXT,
    Kind.VARCHAR: DataType.TEXT,
    Kind.CHAR: DataType.TEXT,
    Kind.INT: DataType.INT,
    Kind.BIGINT: DataType.INT,
    Kind.BOOL: DataType.BOOL,
    Kind.TIMESTAMP: DataType.DATE,
}


class SchemaMismatchError(RuntimeError):
    """An existing collection cannot hold what the registry describes."""


@dataclass(frozen=True)
class PropertySpec:
    name: str
    data_type: DataType
    exact: bool = False  # a key filtered by equality: tokenized as one whole field, never searched
    long_text: bool = False  # searched by keyword or vector, never filtered: no filterable index
    ranged: bool = False  # filtered by id ranges (shard scans, digest sums): a range index too


def property_specs(e: EntityType) -> list[PropertySpec]:
    """The properties the contract gives a collection, in registry order."""
    if e is PASSAGE:
        keys = ("parent_collection", "parent_key", "property", "language")
        specs = [
            PropertySpec(
                c.name,
                WEAVIATE_TYPES[c.kind],
                exact=c.name in keys,
                long_text=c.name == PASSAGE_TEXT,
                ranged=c.name == PASSAGE_PARENT_ID,
            )
            for c in e.columns
        ]
        return [
            *specs,
            PropertySpec(HASH_PROPERTY, DataType.TEXT),
            PropertySpec(PARENT_HASH_PROPERTY, DataType.TEXT),
            PropertySpec(PASSAGE_COUNT_PROPERTY, DataType.INT),
            PropertySpec(DIGEST_PROPERTY, DataType.INT),
        ]
    specs = [PropertySpec(SOURCE_ID_PROPERTY, DataType.INT, ranged=True)]
    long = {p.property for p in e.passages}  # the texts long enough to be cut into passages
    specs += [
        PropertySpec(c.name, WEAVIATE_TYPES[c.kind], long_text=c.name in long) for c in e.property_columns
    ]
    specs.append(PropertySpec(HASH_PROPERTY, DataType.TEXT))
    specs.append(PropertySpec(REF_COUNT_PROPERTY, DataType.INT))
    specs.append(PropertySpec(VECTOR_HASH_PROPERTY, DataType.TEXT))
    specs.append(PropertySpec(DIGEST_PROPERTY, DataType.INT))
    specs.append(PropertySpec(REF_DIGEST_PROPERTY, DataType.INT))
    return specs


# Bookkeeping nobody filters by: hashes compared after a read by id, and digests and reference
# counts summed under a filter on `source_id` ranges (a filtered aggregation reads the objects it
# matched, so the summed property needs no index of its own; an unfiltered sum would).
UNINDEXED = (
    HASH_PROPERTY,
    VECTOR_HASH_PROPERTY,
    PARENT_HASH_PROPERTY,
    PASSAGE_COUNT_PROPERTY,
    REF_COUNT_PROPERTY,
    DIGEST_PROPERTY,
    REF_DIGEST_PROPERTY,
)


def _create_property(spec: PropertySpec) -> Property:
    if spec.name in UNINDEXED:
        return Property(
            name=spec.name,
            data_type=spec.data_type,
            index_searchable=False,
            index_filterable=False,
            index_range_filters=False,
            skip_vectorization=True,
        )
    # Only text is ever vectorized: ids, numbers and timestamps are kept out, whatever module the
    # server runs. Each index costs Weaviate work on every write; which one a property gets is
    # decided by what is asked of it (docs/design.md, "Indexes"):
    return Property(
        name=spec.name,
        data_type=spec.data_type,
        # id ranges (`source_id`, a passage's `parent_id`); other numbers and dates can still be
        # filtered by range through their filterable index
        index_range_filters=spec.ranged,
        skip_vectorization=spec.data_type != DataType.TEXT or spec.exact,
        tokenization=Tokenization.FIELD if spec.exact else None,
        # a key is matched whole, never ranked by BM25
        index_searchable=False if spec.exact else None,
        # a long text is ranked, never matched whole: a filterable index of every word would serve
        # only `equal`/`like` filters on whole bodies, which nobody runs
        index_filterable=False if spec.long_text else None,
    )


def vector_config(
    e: EntityType, settings: Settings | None
) -> _VectorConfigCreate | list[_VectorConfigCreate] | None:
    """The collection's vectors for the configured mode; None leaves it to the server's default module."""
    mode = settings.vectorizer if settings is not None else None
    if mode is None:
        return None
    if mode == "none" or not e.vectors:
        # weaviate-client leaves self_provided() unannotated (Any); it builds one _VectorConfigCreate.
        unnamed: _VectorConfigCreate = Configure.Vectors.self_provided()
        return unnamed
    if mode == "weaviate":
        assert settings is not None
        return [
            Configure.Vectors.custom(
                name=v.name,
                module_name=settings.weaviate_module,
                module_config=dict(settings.weaviate_module_config),
                source_properties=list(v.source_properties),
            )
            for v in e.vectors
        ]
    return [Configure.Vectors.self_provided(name=v.name) for v in e.vectors]


def vector_problems(e: EntityType, existing: set[str], settings: Settings | None) -> list[str]:
    """Named vectors the settings need that the existing collection lacks (they cannot be added in place)."""
    if settings is None or settings.vectorizer in (None, "none"):
        return []
    missing = sorted({v.name for v in e.vectors} - existing)
    if not missing:
        return []
    return [
        f"{e.collection} has vectors {sorted(existing) or 'none'} in Weaviate, TERCUL_SYNC_VECTORIZER="
        f"{settings.vectorizer} needs {missing}: run `tercul-sync rebuild {e.collection}` (or the "
        f"rebuild_collections job) to rebuild it behind its alias"
    ]


def schema_problems(
    e: EntityType,
    existing_props: dict[str, str],
    existing_refs: dict[str, list[str]],
    relations: Iterable[Relation],
    targets: Mapping[str, str] | None = None,
) -> list[str]:
    """Why an existing collection is incompatible; empty when it can be reused.

    ``existing_props`` maps property name to Weaviate data type name;
    ``existing_refs`` maps reference property name to its target collections;
    ``targets`` maps a relation to the collection its references must point at
    (by default the relation's target, by name).
    """
    problems = []
    for spec in property_specs(e):
        have = existing_props.get(spec.name)
        if have is not None and have != spec.data_type.value:
            problems.append(
                f"{e.collection}.{spec.name} is {have} in Weaviate, the registry needs {spec.data_type.value}"
            )
        if spec.name in existing_refs:
            problems.append(
                f"{e.collection}.{spec.name} is a reference in Weaviate, "
                f"the registry needs {spec.data_type.value}"
            )
    for r in relations:
        if r.name in existing_props:
            problems.append(
                f"{e.collection}.{r.name} is a {existing_props[r.name]} property in Weaviate, "
                f"the registry needs a reference to {r.target}"
            )
        refs_to = existing_refs.get(r.name)
        need = (targets or {}).get(r.name, r.target)
        if refs_to is not None and [t.lower() for t in refs_to] != [need.lower()]:
            problems.append(
                f"{e.collection}.{r.name} references {refs_to} in Weaviate, the registry needs [{need}]"
            )
    return problems


def versioned(collection: str, version: int) -> str:
    """The name of version ``version`` of a collection: ``Work_v2``."""
    return f"{collection}_v{version}"


def version_of(collection: str, physical: str) -> int:
    """The version number of ``physical`` (0 for a plain collection made before aliases)."""
    prefix = f"{collection}_v"
    return int(physical[len(prefix) :]) if physical.startswith(prefix) else 0


def resolve(client: weaviate.WeaviateClient, collection: str) -> str | None:
    """The collection that ``collection`` names now: its alias's target, itself if it is a plain
    collection, None if neither exists."""
    alias = client.alias.get(alias_name=collection)
    if alias is not None:
        return alias.collection
    return collection if client.collections.exists(collection) else None


class _Held:
    """The collections and aliases Weaviate holds, read with two requests when ``ensure_schema``
    starts and forgotten, collection by collection, as it changes them. Every step checks the
    schema first; asking per collection and per reference (exists, its config, its alias, its
    replication) was some fifty requests a step, 0.3 s each step at 100k rows while Weaviate was
    busy writing."""

    def __init__(self, client: weaviate.WeaviateClient) -> None:
        self.client = client
        self.configs: dict[str, CollectionConfig] = dict(client.collections.list_all(simple=False))
        self.names = set(self.configs)  # the collections known to exist, whether or not their config is held
        self.aliases = {a: r.collection for a, r in (client.alias.list_all() or {}).items()}

    def resolve(self, collection: str) -> str | None:
        """As ``resolve``, from what was read."""
        return self.aliases.get(collection) or (collection if collection in self.names else None)

    def config(self, name: str) -> CollectionConfig:
        if name not in self.configs:  # created or changed since the read (by this call or another step)
            self.configs[name] = self.client.collections.use(name).config.get()
        self.names.add(name)
        return self.configs[name]

    def changed(self, name: str) -> None:
        """``name`` exists and was just changed: its config is read again when next needed."""
        self.names.add(name)
        self.configs.pop(name, None)


def ensure_schema(
    client: weaviate.WeaviateClient,
    settings: Settings | None = None,
    entities: Iterable[EntityType] = ENTITIES,
    relations: Iterable[Relation] = RELATIONS,
    names: Mapping[str, str] | None = None,
    on_ready: Callable[[str, list[str]], None] | None = None,
) -> list[str]:
    """Create or check every collection and reference property; return what was changed.

    ``settings`` choose the vectors (``TERCUL_SYNC_VECTORIZER``); None leaves them to the server.
    Each collection is the one its alias names, or a new ``<name>_v1`` behind a new alias.
    ``names`` maps registry names to other collections to ensure instead (a rebuild's new
    versions); those get no alias here (the rebuild swaps it when they are full).
    ``on_ready(collection, changes)`` is called as soon as a collection (registry name) and all
    its reference properties are in place, with what was changed for it (``SchemaInBackground``
    lets a step start writing then, while later collections are still being made).
    """
    ready_now = on_ready or (lambda collection, made: None)
    # Targets first (``sync_order``), so that each collection is created with its references.
    order = {e.collection: i for i, e in enumerate(sync_order())}
    entities = sorted(entities, key=lambda e: order.get(e.collection, len(order)))
    relations = list(relations)
    given = dict(names or {})
    physical: dict[str, str] = {}
    held = _Held(client)

    def name_of(collection: str) -> str:
        if collection not in physical:
            found = given.get(collection) or held.resolve(collection)
            physical[collection] = found or versioned(collection, 1)
        return physical[collection]

    changes: list[str] = []
    waiting: dict[str, list[str]] = {}  # collections made or checked, some of their references not yet
    # A reference needs its target collection to exist: a new collection is created with those of
    # its references whose targets exist (or that point at itself), in one request; the others are
    # added once every collection exists.
    for e in entities:
        mine = [r for r in relations if r.source == e.collection]
        own = name_of(e.collection)
        ready = [
            ReferenceProperty(name=r.name, target_collection=name_of(r.target))
            for r in mine
            if name_of(r.target) == own or name_of(r.target) in held.names
        ]
        made = _ensure_collection(held, e, own, mine, name_of, settings, ready)
        if e.collection not in given:
            made += _ensure_alias(held, e.collection, name_of(e.collection))
        changes += made
        if all(r.name in _existing(held, own)[1] for r in mine):
            ready_now(e.collection, made)
        else:  # a reference whose target comes later (or did not exist yet): added below
            waiting[e.collection] = made
    for r in relations:
        added = _ensure_reference(held, r, name_of(r.source), name_of(r.target))
        changes += added
        waiting.get(r.source, []).extend(added)
    for collection, made in waiting.items():
        ready_now(collection, made)
    parents = [e.collection for e in passage_parents()] if settings is None or settings.passages else []
    if parents and all(held.resolve(p) or p in given for p in parents):
        passage = name_of(PASSAGE_COLLECTION)
        parent = ReferencePropertyMultiTarget(
            name=PASSAGE_PARENT_REFERENCE, target_collections=[name_of(p) for p in parents]
        )
        made = _ensure_collection(held, PASSAGE, passage, [], name_of, settings, [parent])
        if PASSAGE_COLLECTION not in given:
            made += _ensure_alias(held, PASSAGE_COLLECTION, passage)
        made += _ensure_passage_reference(held, passage, [name_of(p) for p in parents])
        changes += made
        ready_now(PASSAGE_COLLECTION, made)
    return changes


def _ensure_alias(held: _Held, alias: str, physical: str) -> list[str]:
    """Point ``alias`` at ``physical`` if no alias has that name yet (a plain collection needs none)."""
    if alias == physical or alias in held.aliases:
        return []
    try:
        held.client.alias.create(alias_name=alias, target_collection=physical)
    except SchemaRace as exc:
        if not _lost_race(exc):
            raise
        return []
    held.aliases[alias] = physical
    return [f"created alias {alias} -> {physical}"]


# Steps run in parallel and each ensures the schema: a 422, or the client's own check of a reference
# property (WeaviateInvalidInputError "Reference with name ... already exists"), may only mean that
# another step created the same thing first.
SchemaRace = (UnexpectedStatusCodeError, WeaviateInvalidInputError)


def _lost_race(exc: Exception) -> bool:
    """Whether a refusal says another step created the same thing first."""
    text = str(exc)
    return "already exists" in text or "already in use" in text


def _existing(held: _Held, name: str) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    config = held.config(name)
    props = {p.name: p.data_type.value for p in config.properties}
    refs = {r.name: list(r.target_collections) for r in config.references}
    return props, refs, set((config.vector_config or {}).keys())


def _ensure_collection(
    held: _Held,
    e: EntityType,
    physical: str,
    relations: list[Relation],
    name_of: Callable[[str], str],
    settings: Settings | None,
    references: Sequence[ReferenceProperty | ReferencePropertyMultiTarget] = (),
) -> list[str]:
    """Create ``physical`` (with ``references``) if it does not exist; otherwise check it and add
    the properties it lacks."""
    client = held.client
    if physical not in held.names:
        try:
            client.collections.create(
                physical,
                properties=[_create_property(s) for s in property_specs(e)],
                references=list(references) or None,
                vector_config=vector_config(e, settings),
                replication_config=replication_config(settings),
            )
            held.changed(physical)
            return [f"created collection {physical}"]
        except SchemaRace as exc:
            if not _lost_race(exc):
                raise
    props, refs, vectors = _existing(held, physical)
    targets = {r.name: name_of(r.target) for r in relations}
    problems = schema_problems(e, props, refs, relations, targets) + vector_problems(e, vectors, settings)
    if settings is not None:
        problems += replication_problems(physical, held.config(physical).replication_config.factor, settings)
    if problems:
        raise SchemaMismatchError("incompatible Weaviate schema: " + "; ".join(problems))
    changes = []
    collection = client.collections.use(physical)
    for spec in property_specs(e):
        if spec.name not in props:
            try:
                collection.config.add_property(_create_property(spec))
                changes.append(f"added property {physical}.{spec.name}")
            except SchemaRace as exc:
                if not _lost_race(exc):
                    raise
            held.changed(physical)
    return changes


def _ensure_passage_reference(held: _Held, passage: str, parents: list[str]) -> list[str]:
    """``Passage.parent``: one reference property that may point at any parent type."""
    _, refs, _ = _existing(held, passage)
    have = refs.get(PASSAGE_PARENT_REFERENCE)
    if have is not None:
        if sorted(t.lower() for t in have) != sorted(p.lower() for p in parents):
            raise SchemaMismatchError(
                f"{passage}.{PASSAGE_PARENT_REFERENCE} references {have}, needs {parents}"
            )
        return []
    held.changed(passage)
    try:
        held.client.collections.use(passage).config.add_reference(
            ReferencePropertyMultiTarget(name=PASSAGE_PARENT_REFERENCE, target_collections=parents)
        )
    except SchemaRace as exc:
        if not _lost_race(exc):
            raise
        return []
    return [f"added reference {passage}.{PASSAGE_PARENT_REFERENCE} -> {', '.join(parents)}"]


def _ensure_reference(held: _Held, r: Relation, source: str, target: str) -> list[str]:
    """``source.<r.name>``, pointing at the collection ``target`` (never an alias: Weaviate refuses one)."""
    _, refs, _ = _existing(held, source)
    if r.name in refs:
        return []
    held.changed(source)
    try:
        held.client.collections.use(source).config.add_reference(
            ReferenceProperty(name=r.name, target_collection=target)
        )
    except SchemaRace as exc:
        if not _lost_race(exc):
            raise
        return []
    return [f"added reference {source}.{r.name} -> {target}"]
