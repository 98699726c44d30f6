"""Ids held for a whole collection, compactly: what a walk over every object is compared with.

A Python ``set`` of ints costs about 56 bytes an id and a ``dict`` of int to int about 100; at a
million rows per table that grew a step's peak memory with the catalog. These keep sorted
``array('q')`` columns (8 bytes an id, 8 more for a value) and look ids up by bisection (C code,
a fraction of a microsecond). They are filled from queries in id order, streamed, so no list of
every row is built on the way.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator


class SortedIds:
    """Ids in ascending order, for membership tests."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids = array("q")
        last: int | None = None
        for i in ids:
            if last is not None and i <= last:
                raise ValueError(f"ids must come in ascending order without repeats: {i} after {last}")
            self._ids.append(i)
            last = i

    def _find(self, key: int) -> int:
        """The position of ``key``, or -1."""
        at = bisect_left(self._ids, key)
        return at if at < len(self._ids) and self._ids[at] == key else -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self._find(key) >= 0

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)


class IdCounts(SortedIds):
    """Ids in ascending order, each with a count (``get`` answers like a dict's)."""

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self._counts = array("q")
        super().__init__(self._keep_counts(pairs))

    def _keep_counts(self, pairs: Iterable[tuple[int, int]]) -> Iterable[int]:
        for i, n in pairs:
            self._counts.append(n)
            yield i

    def get(self, key: int, default: int = 0) -> int:
        at = self._find(key)
        return self._counts[at] if at >= 0 else default
