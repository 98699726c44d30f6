"""Finding the few ids where Weaviate and the database disagree, without reading every id.

Hard deletes and removed edges leave nothing for a cursor to follow. Walking
every object to find them costs a full pass. Instead, both sides are
measured over ranges of row ids (a count of objects, or a sum of reference
counts, in Weaviate; the same in SQL), and only ranges whose measures differ
are split, in halves, until a range is small enough to compare id by id. A
handful of changes costs a few dozen aggregate queries; changes everywhere
cost about what a walk costs. The one blind spot: a missing object and an
orphan in the same range cancel out; the parity check and full runs cover it.
"""

from __future__ import annotations

from collections.abc import Callable

Measure = Callable[[int, int], int]  # (low id, high id exclusive) -> a number from one side
Leaf = Callable[[int, int], list[int]]  # (low, high) -> the ids in that range that differ

LEAF_SPAN = 4_096  # ids per range compared id by id


def bisect_mismatches(low: int, high: int, database: Measure, weaviate: Measure, leaf: Leaf) -> list[int]:
    """The ids in ``[low, high)`` that ``leaf`` finds, looking only into ranges whose measures differ."""
    found: list[int] = []
    pending = [(low, high)]
    while pending:
        a, b = pending.pop()
        if a >= b or database(a, b) == weaviate(a, b):
            continue
        if b - a <= LEAF_SPAN:
            found += leaf(a, b)
            continue
        middle = (a + b) // 2
        pending += [(middle, b), (a, middle)]
    return sorted(found)
