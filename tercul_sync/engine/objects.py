"""Rows to Weaviate objects: pure functions, no I/O."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from tercul_sync.engine.digests import DIGEST_PROPERTY, REF_DIGEST_PROPERTY
from tercul_sync.engine.registry import SOURCE_ID_PROPERTY, EntityType, Kind, object_uuid
from tercul_sync.engine.vectors import VECTOR_HASH_PROPERTY, encode_hashes

HASH_PROPERTY = "sync_hash"  # content hash of what we store; lets unchanged objects be skipped
REF_COUNT_PROPERTY = "sync_ref_count"  # references the object carries; their sum is checked against SQL
# On a parent's first passage only: a hash of everything its passages are cut from, so that a
# parent whose text did not change is skipped whole, without reading each passage's hash.
PARENT_HASH_PROPERTY = "sync_parent_hash"
# On the same first passage: how many passages the parent's texts gave when they were written
# (summed against a count of the passages by the parity check, ``parity.py``).
PASSAGE_COUNT_PROPERTY = "sync_passages"
BOOKKEEPING_PROPERTIES = (
    HASH_PROPERTY,
    REF_COUNT_PROPERTY,
    VECTOR_HASH_PROPERTY,
    PARENT_HASH_PROPERTY,
    PASSAGE_COUNT_PROPERTY,
    DIGEST_PROPERTY,
    REF_DIGEST_PROPERTY,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectWrite:
    """One object to upsert: its row id (for reports), uuid, properties, references and named vectors.

    ``vectors`` is filled after the hash check (only objects that are written need them).
    """

    row_id: int
    uuid: str
    properties: dict[str, Any]
    references: dict[str, list[str]] = field(default_factory=dict)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    # reference properties that may point at several collections: {property: the target's collection}
    reference_collections: dict[str, str] = field(default_factory=dict)
    # The stored-hash read found no object for this uuid in a collection that held objects: once
    # written, the object must be found by id (writing.ObjectSyncer._make_findable).
    not_found_before: bool = False

    @property
    def size(self) -> int:
        """Approximate request bytes, used to keep a batch under the gRPC message limit."""
        text = sum(len(v) for v in self.properties.values() if isinstance(v, str))
        refs = 48 * sum(len(v) for v in self.references.values())
        return (
            64 * (len(self.properties) + 1) + 4 * text + refs + 8 * sum(len(v) for v in self.vectors.values())
        )


def as_utc(value: datetime | str) -> datetime:
    """A timestamp made timezone-aware.

    SQLite hands back naive ones (or text), which the contract defines as UTC.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_weaviate_value(kind: Kind, value: Any) -> Any:
    """A column value as Weaviate stores it.

    Timestamps become timezone-aware RFC 3339 text (``isoformat``), formatted once here: the
    content hash hashes that same text, and weaviate-client sends text as it is, where it would
    format a ``datetime`` again for every object it converts. Values of a surprising type pass
    through as they are: Weaviate's own validation rejects them, and the row is reported.
    """
    if kind is Kind.TIMESTAMP and isinstance(value, datetime):
        return as_utc(value).isoformat()
    return value


def row_properties(e: EntityType, row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's properties for one row; NULL columns are left out."""
    props: dict[str, Any] = {SOURCE_ID_PROPERTY: row["id"]}
    for c in e.property_columns:
        value = row[c.name]
        if value is not None:
            props[c.name] = to_weaviate_value(c.kind, value)
    return props


# What ``json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str)`` builds on every call,
# made once: the hash is of the same text, and it runs once per object (and per passage).
_HASHED_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)
_NOT_HASHED = (HASH_PROPERTY, PARENT_HASH_PROPERTY)


def content_hash(properties: Mapping[str, Any], references: Mapping[str, Sequence[str]]) -> str:
    """A stable digest of an object's properties and reference lists (keys sorted by the encoder)."""
    hashed = dict(properties)  # timestamps are text already (to_weaviate_value)
    for name in _NOT_HASHED:
        hashed.pop(name, None)
    doc = {"p": hashed, "r": {k: sorted(v) for k, v in references.items() if v}}
    return hashlib.sha256(_HASHED_JSON.encode(doc).encode()).hexdigest()


def build_object(
    e: EntityType,
    row: Mapping[str, Any],
    references: Mapping[str, Sequence[str]] | None = None,
    vector_hashes: Mapping[str, str] | None = None,
    digest: int | None = None,
    ref_digest: int | None = None,
) -> ObjectWrite:
    """The object for one row, with its references (sorted), its vectors' hashes, its range digests
    (``digests.py``) and content hash."""
    refs = {name: sorted(set(uuids)) for name, uuids in (references or {}).items() if uuids}
    props = row_properties(e, row)
    props[REF_COUNT_PROPERTY] = sum(len(v) for v in refs.values())
    if vector_hashes is not None:
        props[VECTOR_HASH_PROPERTY] = encode_hashes(vector_hashes)
    if digest is not None:
        props[DIGEST_PROPERTY] = digest
    if ref_digest is not None:
        props[REF_DIGEST_PROPERTY] = ref_digest
    props[HASH_PROPERTY] = content_hash(props, refs)
    return ObjectWrite(row["id"], object_uuid(e.collection, row["id"]), props, refs)


def chunk(
    items: Iterable[T], max_count: int, max_bytes: int, size_of: Callable[[T], int]
) -> Iterator[list[T]]:
    """Split ``items`` into lists of at most ``max_count`` items and about ``max_bytes``.

    An item larger than ``max_bytes`` alone goes in a list of its own, so it is
    still tried (and reported if the server refuses it) instead of dropped.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError(f"batch limits must be positive, got count={max_count} bytes={max_bytes}")
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            yield current
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        yield current


# Weaviate's gRPC batch carries numbers as IEEE doubles: beyond 2**53 an integer lands rounded
# (9007199254740993 is stored as 9007199254740992) or is refused; such a row is reported instead.
MAX_EXACT_INT = 2**53


_TEXT, _INT, _TIME = "text", "int", "time"  # what row_problem checks in a column, by its kind
_CHECKED = {
    Kind.TEXT: _TEXT,
    Kind.VARCHAR: _TEXT,
    Kind.CHAR: _TEXT,
    Kind.INT: _INT,
    Kind.BIGINT: _INT,
    Kind.TIMESTAMP: _TIME,
}


@functools.cache
def _checked_columns(e: EntityType) -> tuple[tuple[str, str], ...]:
    """(column, check) for the row id and every stored column that can hold a bad value, in order."""
    columns = [("id", _INT)]
    columns += [(c.name, _CHECKED[c.kind]) for c in e.property_columns if c.kind in _CHECKED]
    return tuple(columns)


def row_problem(e: EntityType, row: Mapping[str, Any]) -> str | None:
    """Why a row cannot be stored as it is, or None: the reason goes to the failure report.

    Text that is not valid Unicode (a lone surrogate, from bytes no UTF-8 encoder
    wrote), an integer Weaviate would round, a timestamp Python cannot hold
    (``reading.OutOfRange``, e.g. year 1 at +05:00 is year 0 in UTC). It runs for
    every row read: the columns to check are worked out once per type.
    """
    for name, check in _checked_columns(e):
        value = row[name]
        if value is None:
            continue
        if check == _TEXT:
            # ASCII holds no surrogate: only other text is encoded (copied) to find one
            if not isinstance(value, str) or value.isascii():
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start]
                return (
                    f"column {name} is not valid Unicode text: U+{ord(bad):04X} (a lone surrogate) at "
                    f"character {exc.start}; Weaviate stores only text that encodes as UTF-8"
                )
        elif check == _INT:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
                return (
                    f"column {name} is {value}, beyond ±2^53: Weaviate's batch API carries numbers as "
                    f"doubles and would store it rounded"
                )
        elif not isinstance(value, datetime):
            return (
                f"column {name} holds {value!s}, not a timestamp Python can represent "
                "(years 1 to 9999 in UTC)"
            )
    return None
