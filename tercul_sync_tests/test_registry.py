"""The registry: the one place a table becomes a collection."""

from __future__ import annotations

import pytest
import weaviate.util

from tercul_sync.engine import registry
from tercul_sync.engine.registry import (
    ENTITIES,
    RELATIONS,
    Column,
    EntityType,
    Kind,
    Relation,
    validate_registry,
)
from tercul_sync.engine.weaviate_schema import property_specs, schema_problems

pytestmark = pytest.mark.unit


def test_uuid_is_the_contracts_uuid5():
    assert registry.object_uuid("Work", 42) == str(weaviate.util.generate_uuid5("Work:42"))
    assert registry.object_uuid("Work", 42) != registry.object_uuid("Author", 42)
    # The hand-computed uuid5 against the library's, over ids of every size and every collection.
    ids = [0, 1, -1, 2**31, 2**53, *range(0, 200_000, 1_009)]
    for e in ENTITIES:
        for i in ids:
            assert registry.object_uuid(e.collection, i) == weaviate.util.generate_uuid5(
                f"{e.collection}:{i}"
            )


def test_passage_ids_are_the_library_uuid5_of_their_names():
    from tercul_sync.engine.passages import passage_uuid

    for collection, parent, prop, position in [("Work", 7, "body", 0), ("Translation", 2**40, "body", 311)]:
        name = f"Passage:{collection}:{parent}:{prop}:{position}"
        assert passage_uuid(collection, parent, prop, position) == weaviate.util.generate_uuid5(name)
    for name in ["", "ü" * 50, "作品:1", "a:b\n\x00"]:
        assert registry.uuid5_text(name) == weaviate.util.generate_uuid5(name)


def test_every_contract_table_and_relation_is_registered():
    assert {e.table: e.collection for e in ENTITIES} == {
        "authors": "Author",
        "works": "Work",
        "translations": "Translation",
        "books": "Book",
        "publishers": "Publisher",
        "tags": "Tag",
        "categories": "Category",
    }
    assert len(RELATIONS) == 8
    assert Relation("Book", "publisher", "Publisher") in RELATIONS
    assert registry.relations_from("Translation") == (
        Relation("Translation", "translation_of", "Work"),
        Relation("Translation", "translators", "Author"),
    )


def test_properties_follow_the_contract():
    names = [s.name for s in property_specs(registry.entity("Work"))]
    assert names[:1] == ["source_id"]
    assert {"title", "original_language", "body", "is_public_domain", "created_at", "updated_at"} <= set(
        names
    )
    assert "deleted_at" not in names and "id" not in names


def test_registry_mistakes_are_caught_at_import_time():
    dup = (*ENTITIES, EntityType("Work", "works2", ()))
    with pytest.raises(ValueError, match="duplicate collection"):
        validate_registry(dup, RELATIONS)
    with pytest.raises(ValueError, match="unknown collection"):
        validate_registry(ENTITIES, (*RELATIONS, Relation("Work", "x", "Nope")))
    with pytest.raises(ValueError, match="clashes"):
        validate_registry(ENTITIES, (*RELATIONS, Relation("Work", "title", "Author")))
    with pytest.raises(ValueError, match="needs a length"):
        validate_registry((EntityType("X", "xs", (Column("code", Kind.CHAR),)),), ())


def test_schema_problems_name_the_property():
    work = registry.entity("Work")
    props = {s.name: s.data_type.value for s in property_specs(work)}
    assert schema_problems(work, props, {"authors": ["Author"]}, registry.relations_from("Work")) == []
    props["published_year"] = "text"
    problems = schema_problems(work, props, {"authors": ["Tag"]}, registry.relations_from("Work"))
    assert any("Work.published_year is text" in p for p in problems)
    assert any("Work.authors references ['Tag']" in p for p in problems)


def test_sync_order_puts_every_reference_target_before_its_sources():
    from tercul_sync.engine.registry import RELATIONS, sync_order

    order = [e.collection for e in sync_order()]
    assert sorted(order) == sorted(e.collection for e in ENTITIES)
    for r in RELATIONS:
        if r.source != r.target:
            assert order.index(r.target) < order.index(r.source), r
