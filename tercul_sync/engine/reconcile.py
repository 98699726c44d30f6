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
the caller walks. Before halving, it measures eight small ranges spread over
the span: when more than the share of them differ, differences are
everywhere and it gives up at once (each level of halving is an aggregate
over the whole span, on each side); it stops measuring probes as soon as
that is decided either way. Then it
halves level by level, and gives up as soon as the ranges that differ are
sure to need more reading than the share, before reading any.
The one blind spot: a missing object and an orphan in the same range cancel
out; the nightly parity walk and full runs cover it.
"""

from __future__ import annotations

from collections.abc import Callable

Measure = Callable[[int, int], int]  # (low id, high id exclusive) -> a number from one side
Leaf = Callable[[int, int], list[int]]  # (low, high) -> the ids in that range that differ

LEAF_SPAN = 4_096  # ids per range compared id by id
# Ranges of one leaf, evenly spread, measured first: when more than the share of them differ, the
# differences are everywhere, and a walk is cheaper than halving (each level an aggregate over the
# whole span).
PROBES = 8
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
    if low >= high or database(low, high) == weaviate(low, high):
        return []
    if _dense(low, high, database, weaviate, max_leaf_share):
        return None
    found: list[int] = []
    budget, read = max_leaf_share * (high - low), 0
    differing = [(low, high)]
    while differing:
        leaves = [(a, b) for a, b in differing if b - a <= LEAF_SPAN]
        wider = [(a, b) for a, b in differing if b - a > LEAF_SPAN]
        at_least = read + sum(b - a for a, b in leaves) + len(wider) * (LEAF_SPAN // 2)
        if at_least > budget and high - low > LEAF_SPAN:  # a span of one leaf is read whatever the share
            return None
        for a, b in leaves:
            read += b - a
            found += leaf(a, b)
        halves = [half for a, b in wider for half in ((a, (a + b) // 2), ((a + b) // 2, b))]
        differing = [(a, b) for a, b in halves if a < b and database(a, b) != weaviate(a, b)]
    return sorted(found)


def _dense(low: int, high: int, database: Measure, weaviate: Measure, share: float) -> bool:
    """Whether more than ``share`` of ``PROBES`` one-leaf ranges spread over ``[low, high)`` differ
    (a span of fewer than twice as many leaves is not probed). The probes stop as soon as the
    answer is known: when differences are everywhere, the first few already pass the share."""
    span = high - low
    if span < 2 * PROBES * LEAF_SPAN:
        return False
    needed = int(share * PROBES) + 1  # differing probes that make the span dense
    starts = [low + (2 * i + 1) * span // (2 * PROBES) - LEAF_SPAN // 2 for i in range(PROBES)]
    differ = 0
    for measured, a in enumerate(starts):
        if differ + (PROBES - measured) < needed:
            return False  # the probes left cannot reach the share
        differ += database(a, a + LEAF_SPAN) != weaviate(a, a + LEAF_SPAN)
        if differ >= needed:
            return True
    return False
