"""What a step reports: the failure rule, samples capped at MAX_SAMPLE, reasons, failure files."""

from __future__ import annotations

import json

import pytest

from tercul_sync.engine.reports import (
    MAX_SAMPLE,
    FailureRule,
    ItemFailure,
    ReasonLog,
    add_sample,
    write_failure_report,
)

pytestmark = pytest.mark.unit

DEFAULT_RULE = FailureRule(max_failure_rate=0.01, min_failures_to_fail=10)


@pytest.mark.parametrize(
    ("failed", "rows_read", "fails"),
    [
        (0, 0, False),  # nothing read, nothing failed
        (0, 1_000, False),
        (9, 9, False),  # every row failed, but fewer than min_failures_to_fail: a data problem, a WARN
        (10, 10, True),
        (10, 1_000, False),  # exactly the rate is not above it
        (11, 1_000, True),
        (100, 1_000_000, False),  # many failures, a tiny share
        (5, 0, False),  # no rows read: no rate to exceed
    ],
)
def test_failure_rule_needs_a_large_share_and_enough_failures(failed, rows_read, fails):
    assert (DEFAULT_RULE.verdict(failed, rows_read) is not None) is fails


def test_the_verdict_explains_itself_with_the_settings_named():
    verdict = DEFAULT_RULE.verdict(25, 100)
    assert verdict == (
        "25 of 100 objects failed (25.00%), above TERCUL_SYNC_MAX_FAILURE_RATE=1.00% "
        "(and at least TERCUL_SYNC_MIN_FAILURES_TO_FAIL=10)"
    )


def test_a_zero_rate_and_one_failure_fail_on_any_failure():
    strict = FailureRule(max_failure_rate=0.0, min_failures_to_fail=1)
    assert strict.verdict(1, 1_000_000) is not None
    assert strict.verdict(0, 1_000_000) is None
    lenient = FailureRule(max_failure_rate=1.0, min_failures_to_fail=1)
    assert lenient.verdict(50, 50) is None  # a rate of 100% is never above 1.0


def test_add_sample_stops_at_max_sample():
    sample: list = []
    add_sample(sample, range(5))
    assert sample == [0, 1, 2, 3, 4]
    add_sample(sample, range(100, 200))
    assert len(sample) == MAX_SAMPLE and sample[-1] == 100 + MAX_SAMPLE - 6
    add_sample(sample, [999])
    assert 999 not in sample and len(sample) == MAX_SAMPLE
    full = list(range(MAX_SAMPLE + 5))  # already over: left as it is, never trimmed or grown
    add_sample(full, [1])
    assert len(full) == MAX_SAMPLE + 5


def test_add_sample_consumes_only_what_it_keeps():
    consumed = []

    def ids():
        for i in range(1_000_000):
            consumed.append(i)
            yield i

    sample: list = []
    add_sample(sample, ids())
    assert len(sample) == MAX_SAMPLE and len(consumed) <= MAX_SAMPLE + 1


def test_reason_log_counts_every_item_and_samples_a_few():
    log = ReasonLog()
    for i in range(50):
        log.add("missing_target", i)
    log.add("missing_target", None, n=7)  # counted in bulk, no id
    log.add("unknown_relation", None, n=3)
    assert log.counts == {"missing_target": 57, "unknown_relation": 3}
    assert log.samples["missing_target"] == list(range(MAX_SAMPLE))
    assert log.samples["unknown_relation"] == []
    assert log.as_metadata("skipped") == {
        "skipped_missing_target": 57,
        "skipped_unknown_relation": 3,
        "skipped_sample_ids": {"missing_target": list(range(MAX_SAMPLE))},  # empty samples left out
    }


def test_reason_logs_merge_counts_and_cap_samples():
    a, b = ReasonLog(), ReasonLog()
    for i in range(15):
        a.add("deleted_target", i)
        b.add("deleted_target", 100 + i)
    b.add("missing_source", 7)
    a.merge(b)
    assert a.counts == {"deleted_target": 30, "missing_source": 1}
    assert a.samples["deleted_target"] == [*range(15), *range(100, 100 + MAX_SAMPLE - 15)]
    assert a.samples["missing_source"] == [7]
    assert b.counts == {"deleted_target": 15, "missing_source": 1}  # the other log is left alone


def test_an_empty_reason_log_adds_no_metadata():
    assert ReasonLog().as_metadata("skipped") == {}


def test_failure_report_has_every_failure_one_json_object_a_line(tmp_path):
    path = tmp_path / "reports" / "run-1" / "Work.jsonl"
    failures = [ItemFailure(i, f"bad row {i}", batch=1 + i // 30) for i in range(75)]
    assert write_failure_report(path, "Work", failures) == path
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 75  # all of them, not a sample
    assert lines[0] == {"asset": "Work", "id": 0, "batch": 1, "error": "bad row 0"}
    assert lines[-1] == {"asset": "Work", "id": 74, "batch": 3, "error": "bad row 74"}


def test_no_failures_no_report_file(tmp_path):
    path = tmp_path / "reports" / "Work.jsonl"
    assert write_failure_report(path, "Work", []) is None
    assert not path.exists() and not path.parent.exists()


def test_failure_report_keeps_any_text_and_odd_keys(tmp_path):
    path = tmp_path / "edges.jsonl"
    write_failure_report(path, "edges", [ItemFailure(("works", 3), "ошибка: 'title' 🌙", 2)])
    [line] = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == {
        "asset": "edges",
        "id": ["works", 3],
        "batch": 2,
        "error": "ошибка: 'title' 🌙",
    }
