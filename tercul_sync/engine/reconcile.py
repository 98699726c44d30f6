"""Finding the few ids where Weaviate and the database disagree, without reading every id.

Hard deletes and removed edges leave nothing for a cursor to follow. Walking
every object to find them costs a full pass. Instead, both sides are
measured over ranges of row ids (a count of objects, or a sum of reference
counts, in Weaviate; the same in SQL), and only ranges whose measures differ
are split, in halves, until a range is small enough to compare id by id. A
handful of changes costs a few dozen aggregate queries; changes everywhere
cost more than a walk: every range is measured on both sides and then read
anyway. So the search gives up (returns None) once the ranges it has had to
read id by id cover ``max_leaf_share`` of the span, and the caller walks.
The one blind spot: a missing object and an orphan in the same range cancel
out; the parity check and full runs cover it.
"""

from __future__ import annotations

from collections.abc import Callable

Measure = Callable[[int, int], int]  # (low id, high id exclusive) -> a number from one side
Leaf = Callable[[int, int], list[int]]  # (low, high) -> the ids in that range that differ

LEAF_SPAN = 4_096  # ids per range compared id by id
# Past this share of the span read id by id, differences are everywhere: a walk is cheaper.
WALK_SHARE = 0.25


def bisect_mismatches(
    low: int,
    high: int,
    database: Measure,
    weaviate: Measure,
    leaf: Leaf,
    max_leaf_share: float = 1.0,
) -> list[int] | None:
    """The ids in ``[low, high)`` that ``leaf`` finds, looking only into ranges whose measures differ;
    None once the ranges read by ``leaf`` would cover more than ``max_leaf_share`` of the span."""
    found: list[int] = []
    pending = [(low, high)]
    budget, read = max_leaf_share * (high - low), 0
    while pending:
        a, b = pending.pop()
        if a >= b or database(a, b) == weaviate(a, b):
            continue
        if b - a <= LEAF_SPAN:
            read += b - a
            if read > budget and high - low > LEAF_SPAN:  # a span of one leaf is read whatever the share
                return None
            found += leaf(a, b)
            continue
        middle = (a + b) // 2
        pending += [(middle, b), (a, middle)]
    return sorted(found)
