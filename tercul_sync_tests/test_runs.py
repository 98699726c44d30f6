"""The engine's entry points that need no server: modes, step summaries, edge windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tercul_sync.engine import runs
from tercul_sync.engine.batching import WriteReport
from tercul_sync.engine.edges import EdgeWindow, touched_sources
from tercul_sync.engine.reading import Shard
from tercul_sync.engine.reports import FailureRule, ItemFailure
from tercul_sync.engine.writing import ObjectSyncReport

pytestmark = pytest.mark.unit

FULL, INCREMENTAL, SWEEP = runs.FULL, runs.INCREMENTAL, runs.SWEEP


@pytest.mark.parametrize(
    ("configured", "tagged", "allowed", "mode"),
    [
        (None, None, runs.ENTITY_MODES, FULL),  # neither: full
        (None, INCREMENTAL, runs.ENTITY_MODES, INCREMENTAL),  # the job's tag
        (FULL, INCREMENTAL, runs.ENTITY_MODES, FULL),  # run config wins over the tag
        (SWEEP, None, runs.ENTITY_MODES, SWEEP),
        (None, SWEEP, runs.ENTITY_MODES, SWEEP),
        (None, SWEEP, runs.EDGE_MODES, FULL),  # the edges have no sweep: after one, a full pass
        (SWEEP, None, runs.EDGE_MODES, FULL),
        (None, INCREMENTAL, runs.EDGE_MODES, INCREMENTAL),
        ("", INCREMENTAL, runs.ENTITY_MODES, INCREMENTAL),  # an empty value counts as unset
    ],
)
def test_resolve_mode(configured, tagged, allowed, mode):
    assert runs.resolve_mode(configured, tagged, allowed) == mode


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="mode 'nightly' is not one of full, incremental, sweep"):
        runs.resolve_mode("nightly", None, runs.ENTITY_MODES)
    with pytest.raises(ValueError, match="mode 'bogus' is not one of full, incremental"):
        runs.resolve_mode(None, "bogus", runs.EDGE_MODES)


def test_edge_window_validation():
    assert EdgeWindow(100) == EdgeWindow(100, 0)
    assert EdgeWindow(1, 5).offset == 5
    with pytest.raises(ValueError, match=r"batch_size >= 1 and offset >= 0, got 0, 0"):
        EdgeWindow(0)
    with pytest.raises(ValueError, match=r"got 10, -1"):
        EdgeWindow(10, -1)
    with pytest.raises(AttributeError):
        EdgeWindow(10).offset = 3  # type: ignore[misc]


def test_touched_sources_maps_edge_rows_to_the_collections_they_change():
    rows = [
        (1, "works", 10, "authors"),
        (2, "works", 11, "tags"),
        (3, "works", 12, "inspired_by"),  # a relation the registry does not know: no collection
        (4, "books", 13, "authors"),  # a known name, from a table it does not belong to
        (5, "translations", 14, "translators"),
        (6, "books", 15, "contains"),
        (7, "works", 10, "tags"),
    ]
    assert touched_sources(rows, []) == {"Work": {10, 11}, "Translation": {14}, "Book": {15}}
    assert touched_sources(rows, [Shard(0, 2)]) == {"Work": {10}, "Translation": {14}}


def _report(collection: str, rows: int, written: int, failures: list[ItemFailure], gave_up: int = 0):
    r = ObjectSyncReport(collection, rows_read=rows, unchanged=rows - written - len(failures))
    r.write = WriteReport(
        items=written + len(failures),
        written=written,
        failed=len(failures),
        gave_up=gave_up,
        batches=2,
        failed_batches=1 if failures else 0,
        retried_batches=1 if gave_up else 0,
        failures=failures,
    )
    r.references_written = written
    r.deferred_references.add("target_not_in_weaviate", 77)
    return r


RULE = FailureRule(max_failure_rate=0.01, min_failures_to_fail=10)


def test_summarize_sums_the_reports_and_succeeds_without_failures(tmp_path: Path):
    path = tmp_path / "run" / "edges.jsonl"
    outcome = runs.summarize(
        "edges", [_report("Work", 100, 60, []), _report("Book", 50, 50, [])], {"mode": FULL}, RULE, path
    )
    assert outcome.failure is None and outcome.objects_failed == 0 and not outcome.retryable
    md = outcome.metadata
    assert (md["rows_read"], md["objects_written"], md["objects_unchanged"], md["batches"]) == (
        150,
        110,
        40,
        4,
    )
    assert md["references_deferred_target_not_in_weaviate"] == 2
    assert md["references_deferred_sample_ids"] == {"target_not_in_weaviate": [77, 77]}
    assert md["mode"] == FULL
    assert "failure_report" not in md and "failure_sample" not in md and not path.exists()


def test_summarize_writes_every_failure_and_warns_below_the_rule(tmp_path: Path):
    path = tmp_path / "run" / "Work.jsonl"
    failures = [ItemFailure(17, "invalid integer property 'published_year'", 3)]
    outcome = runs.summarize("Work", [_report("Work", 600, 599, failures)], {}, RULE, path)
    assert outcome.failure is None and outcome.objects_failed == 1
    assert outcome.metadata["failure_report"] == str(path)
    assert outcome.metadata["failure_sample"] == [
        {"id": 17, "batch": 3, "error": "invalid integer property 'published_year'"}
    ]
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [17]


def test_summarize_fails_the_step_above_the_rule_and_says_if_a_retry_may_help(tmp_path: Path):
    failures = [ItemFailure(i, "status code: 503", 1) for i in range(30)]
    permanent = runs.summarize("Work", [_report("Work", 100, 70, failures)], {}, RULE, tmp_path / "a.jsonl")
    assert permanent.failure is not None and permanent.failure.startswith("Work: 30 of 100 objects failed")
    assert permanent.failure.endswith(f"see {tmp_path / 'a.jsonl'}")
    assert not permanent.retryable  # the failures were permanent: a retry would fail the same way
    transient = runs.summarize(
        "Work", [_report("Work", 100, 70, failures, gave_up=30)], {}, RULE, tmp_path / "b.jsonl"
    )
    assert transient.failure is not None and transient.retryable


@pytest.mark.parametrize(
    ("mode", "all_shards", "failed", "objects", "live", "sweep"),
    [
        (SWEEP, True, 0, 10, 10, True),  # a sweep always sweeps
        (FULL, True, 0, 10, 10, False),  # every live row has its object: equal counts, no orphan
        (FULL, True, 0, 12, 10, True),  # two objects too many: orphans
        (FULL, True, 1, 10, 10, True),  # a failed row may hide an orphan behind equal counts
        (FULL, False, 0, 10, 10, True),  # other shards were not written in this step
        (INCREMENTAL, True, 0, 10, 10, False),
        (INCREMENTAL, True, 0, 11, 10, True),  # a row removed outright
    ],
)
def test_the_orphan_sweep_runs_only_when_it_can_find_something(
    mode, all_shards, failed, objects, live, sweep
):
    assert runs.needs_sweep(mode, all_shards, failed, objects, live) is sweep


def test_covers_all_means_every_shard_of_the_table():
    assert runs.covers_all({f"s{i}": Shard(i, 4) for i in range(4)})
    assert not runs.covers_all({f"s{i}": Shard(i, 4) for i in range(3)})
    assert runs.covers_all({"s0": Shard(0, 1)})
    assert not runs.covers_all({})


def test_bisection_finds_exactly_the_differing_ids_and_looks_only_where_counts_differ():
    from tercul_sync.engine import reconcile

    live = set(range(0, 100_000)) - {17, 40_000, 99_998}
    stored = set(range(0, 100_000)) | {100_003}
    calls = []

    def measure(ids):
        def count(a, b):
            calls.append((a, b))
            return sum(1 for i in ids if a <= i < b)

        return count

    def leaf(a, b):
        return sorted({i for i in stored if a <= i < b} - live)

    found = reconcile.bisect_mismatches(0, 100_004, measure(live), measure(stored), leaf)
    assert found == [17, 40_000, 99_998, 100_003]
    # Only the ranges around the four ids were opened: far fewer than the 25 leaves a walk would take.
    assert len(calls) < 2 * 4 * 6 * 2


def test_bisection_gives_up_for_a_walk_when_differences_are_everywhere():
    from tercul_sync.engine import reconcile

    stored = set(range(0, 100_000))
    live = stored - set(range(0, 100_000, 1_000))  # one removed row in every leaf

    def measure(ids):
        return lambda a, b: sum(1 for i in ids if a <= i < b)

    leaves = []

    def leaf_against(rows):
        def leaf(a, b):
            leaves.append((a, b))
            return sorted({i for i in stored if a <= i < b} - rows)

        return leaf

    measured = []

    def database(a, b):
        measured.append((a, b))
        return measure(live)(a, b)

    every = reconcile.bisect_mismatches(0, 100_000, database, measure(stored), leaf_against(live), 0.25)
    assert every is None
    assert leaves == []  # gave up on the aggregates alone, before reading any range id by id
    # ... after one comparison of the whole span, on the probes alone: no level of halving, and only
    # as many probes as it takes to pass the share (three of eight, every one of them differing)
    needed = int(0.25 * reconcile.PROBES) + 1
    assert measured[0] == (0, 100_000) and len(measured) == 1 + needed < 1 + reconcile.PROBES
    assert all(b - a == reconcile.LEAF_SPAN for a, b in measured[1:])
    # Differences in most but not all of the span, unseen by the probes: the halving gives up too.
    half = stored - set(range(50_000, 100_000, 1_000))
    leaves.clear()
    assert (
        reconcile.bisect_mismatches(0, 100_000, measure(half), measure(stored), leaf_against(half), 0.1)
        is None
    )
    assert leaves == []
    # Differences in a few ranges only: found, within the share.
    few = stored - {5, 6, 70_000}
    found = reconcile.bisect_mismatches(0, 100_000, measure(few), measure(stored), leaf_against(few), 0.25)
    assert found == [5, 6, 70_000]
    # A span of a single leaf is read whatever the share.
    one = reconcile.bisect_mismatches(0, 4_000, measure(live), measure(stored), leaf_against(live), 0.0)
    assert one == [0, 1_000, 2_000, 3_000]


def test_probes_stop_once_the_share_can_no_longer_be_passed():
    """One difference, in the eighth probe's range: after six equal probes the last two cannot make
    three of eight, so they are not measured, and the halving finds the id."""
    from tercul_sync.engine import reconcile

    span, width = 100_000, reconcile.LEAF_SPAN
    starts = [(2 * i + 1) * span // (2 * reconcile.PROBES) - width // 2 for i in range(reconcile.PROBES)]
    stored = set(range(span))
    live = stored - {starts[-1] + 10}
    calls = []

    def database(a, b):
        calls.append((a, b))
        return sum(1 for i in live if a <= i < b)

    def weaviate(a, b):
        return sum(1 for i in stored if a <= i < b)

    def leaf(a, b):
        return sorted({i for i in stored if a <= i < b} - live)

    assert reconcile.bisect_mismatches(0, span, database, weaviate, leaf, 0.25) == [starts[-1] + 10]
    assert calls[0] == (0, span)
    assert calls[1:7] == [(a, a + width) for a in starts[:6]]
    assert all((a, a + width) not in calls for a in starts[6:])


def test_bisection_of_equal_sides_makes_one_comparison():
    from tercul_sync.engine import reconcile

    calls = []

    def count(a, b):
        calls.append((a, b))
        return b - a

    assert reconcile.bisect_mismatches(0, 1_000_000, count, count, lambda a, b: [a]) == []
    assert len(calls) == 2


def test_only_the_shards_holding_a_row_whose_write_gave_up_keep_their_cursor():
    shards = {f"shard-{i}": Shard(i, 4) for i in range(4)}
    assert runs.shards_holding(shards, [5, 9, 6]) == {"shard-1", "shard-2"}
    assert runs.shards_holding(shards, iter([3])) == {"shard-3"}  # any iterable, read once
    assert runs.shards_holding(shards, []) == set()
    assert runs.shards_holding({"shard-0": Shard(0, 4)}, [5]) == set()  # rows of shards not in the step
