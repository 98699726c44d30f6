"""The compact id tables a whole-collection walk is compared with (pure logic)."""

from __future__ import annotations

import random

import pytest

from tercul_sync.engine.id_tables import IdCounts, SortedIds

pytestmark = pytest.mark.unit


def test_sorted_ids_answer_membership_like_a_set():
    rng = random.Random(3)
    ids = sorted(rng.sample(range(-1000, 10**12, 7919), 2000))
    table = SortedIds(ids)
    probes = ids + [i + 1 for i in ids] + [-(10**15), 10**15, 0]
    assert [p in table for p in probes] == [p in set(ids) for p in probes]
    assert len(table) == len(ids) and list(table) == ids
    assert "12" not in table and 12.0 not in table  # only ints are ids
    assert 5 not in SortedIds()


def test_id_counts_answer_get_like_a_dict():
    rng = random.Random(4)
    pairs = sorted({rng.randrange(10**9): rng.randrange(50) for _ in range(3000)}.items())
    table, expected = IdCounts(pairs), dict(pairs)
    for key in [k for k, _ in pairs] + [k + 1 for k, _ in pairs] + [-1]:
        assert table.get(key, 0) == expected.get(key, 0)
        assert table.get(key, -7) == expected.get(key, -7)


def test_ids_out_of_order_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        SortedIds([1, 3, 2])
    with pytest.raises(ValueError, match="ascending"):
        IdCounts([(1, 1), (1, 2)])
