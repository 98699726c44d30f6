"""Finding the few ids where Weaviate and the database disagree, without reading every id.

Hard deletes and removed edges leave nothing for a cursor to follow. Walking
every object to find them costs a full pass. Instead, both sides are
measured over ranges of row ids (a count of objects, or a sum of reference
counts, in Weaviate; the same in SQL), and only ranges whose measures differ
are split, in halves, until a range is small enough to compare id by id. A
handful of changes costs a few dozen aggregate queries; changes everywhere
cost more than a walk: every range is measured on both sides and then read
anyway. So the search gives up (returns None) as soon as the ranges it would
have to read id by id are sure to cover ``max_leaf_share`` of the span, and
the caller walks. It halves level by level, so with differences everywhere
it gives up after a few levels of aggregates, before reading any range.
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
    None once the ranges ``leaf`` would have to read are sure to cover more than ``max_leaf_share``
    of the span.

    Ranges are halved level by level (breadth first), so the search sees how many ranges differ
    before it reads any of them id by id: every range that differs holds at least one differing
    range of half a leaf or more, so a level whose differing ranges already outgrow the share
    gives up there, having read nothing.
    """
    found: list[int] = []
    budget, read = max_leaf_share * (high - low), 0
    level = [(low, high)]
    while level:
        differing = [(a, b) for a, b in level if a < b and database(a, b) != weaviate(a, b)]
        leaves = [(a, b) for a, b in differing if b - a <= LEAF_SPAN]
        wider = [(a, b) for a, b in differing if b - a > LEAF_SPAN]
        at_least = read + sum(b - a for a, b in leaves) + len(wider) * (LEAF_SPAN // 2)
        if at_least > budget and high - low > LEAF_SPAN:  # a span of one leaf is read whatever the share
            return None
        for a, b in leaves:
            read += b - a
            found += leaf(a, b)
        level = [half for a, b in wider for half in ((a, (a + b) // 2), ((a + b) // 2, b))]
    return sorted(found)
