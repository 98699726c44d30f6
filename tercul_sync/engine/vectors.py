"""Named vectors: their texts, their hashes, and reusing a stored vector whose text did not change.

In ``client`` mode each named vector of the registry (``VectorSpec``) is the
embedding of its source properties joined by newlines, cut to
``TERCUL_SYNC_EMBED_MAX_CHARS`` at the last space before the limit. Its hash
(the model id and the text) is stored in the object's ``sync_vectors``
property, so it is part of the content hash: an unchanged object is skipped
whole, and a changed object re-embeds only the vectors whose text changed;
the others are read back from Weaviate and written again as they were.

In ``column`` mode the vectors come from database columns, checked for
dimension; their hash is of the values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from tercul_sync.engine.registry import EntityType, VectorSpec

VECTOR_HASH_PROPERTY = "sync_vectors"  # {vector name: hash of what it was computed from}, as JSON


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars``, at the last whitespace before the limit when there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = max(head.rfind(" "), head.rfind("\n"))
    return head[:space] if space > max_chars // 2 else head


def vector_text(spec: VectorSpec, properties: Mapping[str, Any], max_chars: int) -> str:
    """The text a vector is computed from; empty when every source property is empty."""
    parts = [str(properties[p]).strip() for p in spec.source_properties if properties.get(p)]
    return cut("\n".join(p for p in parts if p), max_chars)


def text_hash(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:32]


def values_hash(values: Sequence[float]) -> str:
    return hashlib.sha256(json.dumps([round(float(v), 7) for v in values]).encode()).hexdigest()[:32]


def vector_texts(e: EntityType, properties: Mapping[str, Any], max_chars: int) -> dict[str, str]:
    """``{vector name: text}`` for the vectors of ``e`` that have any text."""
    texts = {v.name: vector_text(v, properties, max_chars) for v in e.vectors}
    return {name: text for name, text in texts.items() if text}


def encode_hashes(hashes: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(hashes.items())))


def decode_hashes(value: object) -> dict[str, str]:
    if not isinstance(value, str) or not value:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def parse_vector(value: object, dimensions: int | None) -> list[float]:
    """A column's vector (a list, pgvector's ``[1,2,3]`` text, or JSON text) as floats.

    Raises ``ValueError`` with the reason when it is NULL, unreadable or of the wrong dimension.
    """
    if value is None:
        raise ValueError("vector is NULL")
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"vector is not readable: {text[:40]!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"vector is not a list of numbers: {str(value)[:40]!r}")
    try:
        floats = [float(x) for x in value]
    except (TypeError, ValueError):
        raise ValueError("vector holds a value that is not a number") from None
    if dimensions is not None and len(floats) != dimensions:
        raise ValueError(
            f"vector has {len(floats)} dimensions, TERCUL_SYNC_VECTOR_DIMENSIONS is {dimensions}"
        )
    return floats
