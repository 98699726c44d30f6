"""The batch processor's retry and error aggregation, with an in-memory sender."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tercul_sync.engine.batching import GAVE_UP, BatchProcessor, WriteReport
from tercul_sync.engine.errors import WritesRefusedError
from tercul_sync.engine.objects import ObjectWrite, chunk
from tercul_sync.engine.settings import RetrySettings

pytestmark = pytest.mark.unit

FAST = RetrySettings(attempts=3, initial_wait=0.001, max_wait=0.002)


class FlakyStore:
    """A stand-in server: refuses some keys for good, some for a while, raises on chosen calls."""

    def __init__(
        self,
        bad: Iterable[int] = (),
        flaky: dict[int, int] | None = None,
        raise_on_calls: Iterable[int] = (),
        error: Exception | None = None,
    ):
        self.bad, self.flaky, self.raise_on_calls = set(bad), dict(flaky or {}), set(raise_on_calls)
        self.error = error or ConnectionError("connection refused")
        self.stored: list[int] = []
        self.calls = 0
        self.sent: list[list[int]] = []

    def send(self, items: list[int]) -> dict[int, str]:
        self.calls += 1
        self.sent.append(list(items))
        if self.calls in self.raise_on_calls:
            raise self.error
        errors = {}
        for i, key in enumerate(items):
            if key in self.bad:
                errors[i] = f"invalid integer property 'published_year' for row {key}"
            elif self.flaky.get(key, 0) > 0:
                self.flaky[key] -= 1
                errors[i] = "status code: 503, service unavailable"
            else:
                self.stored.append(key)
        return errors


def _processor(store: FlakyStore) -> BatchProcessor[int]:
    return BatchProcessor(store.send, key_of=lambda k: k, retry=FAST)


def _run(processor: BatchProcessor[int], batches: list[list[int]]) -> WriteReport:
    for batch in batches:
        processor.write_batch(batch)
    return processor.report


def test_permanent_failures_are_reported_with_ids_and_the_rest_lands():
    store = FlakyStore(bad={3, 12})
    processor = _processor(store)
    landed = processor.write_batch(list(range(10)))
    assert landed == [k for k in range(10) if k != 3]
    report = _run(processor, [list(range(10, 20))])
    assert sorted(store.stored) == [k for k in range(20) if k not in (3, 12)]
    assert (report.items, report.written, report.failed, report.batches, report.failed_batches) == (
        20,
        18,
        2,
        2,
        2,
    )
    assert (report.gave_up, report.retried_batches, store.calls) == (0, 0, 2)  # permanent: never retried
    assert [(f.key, f.batch) for f in report.failures] == [(3, 1), (12, 2)]
    assert "published_year" in report.failures[0].message


def test_transient_failures_are_retried_only_for_the_failed_items():
    store = FlakyStore(flaky={4: 2})
    report = _run(_processor(store), [list(range(8))])
    assert sorted(store.stored) == list(range(8)) and store.stored.count(0) == 1
    assert store.sent == [list(range(8)), [4], [4]]
    assert (report.failed, report.retried_batches, report.written, store.calls) == (0, 1, 8, 3)


def test_transient_failures_that_outlast_the_retries_are_counted_as_given_up():
    store = FlakyStore(flaky={2: 99}, bad={5})
    report = _run(_processor(store), [list(range(6))])
    assert store.calls == FAST.attempts
    assert sorted((f.key, f.message.startswith(GAVE_UP)) for f in report.failures) == [(2, True), (5, False)]
    assert f"{GAVE_UP} {FAST.attempts} attempts: status code: 503" in report.failures[-1].message
    assert (report.failed, report.gave_up, report.written) == (2, 1, 4)


def test_a_batch_that_raises_does_not_stop_the_others():
    store = FlakyStore(raise_on_calls={1, 2, 3})  # the first batch's three attempts all raise
    report = _run(_processor(store), [[1, 2], [3, 4]])
    assert store.stored == [3, 4]
    assert report.failed == 2 and report.gave_up == 2
    assert report.failures[0].message.startswith(
        "gave up after 3 attempts: ConnectionError: connection refused"
    )


def test_a_permanent_exception_is_not_retried():
    store = FlakyStore(raise_on_calls={1}, error=ValueError("schema says no"))
    report = _run(_processor(store), [[1, 2], [3]])
    assert store.calls == 2 and store.stored == [3]
    assert [(f.key, f.message) for f in report.failures] == [
        (1, "ValueError: schema says no"),
        (2, "ValueError: schema says no"),
    ]
    assert report.gave_up == 0


def test_reports_merge_and_sample():
    a = WriteReport()
    b = _run(_processor(FlakyStore(bad=range(30))), [list(range(30))])
    a.merge(b)
    a.merge(b)
    assert (a.items, a.failed, a.batches, len(a.failures)) == (60, 60, 2, 60)
    assert len(a.sample()) == 20 and a.sample(2) == [
        {"id": 0, "batch": 1, "error": "invalid integer property 'published_year' for row 0"},
        {"id": 1, "batch": 1, "error": "invalid integer property 'published_year' for row 1"},
    ]


def test_chunk_bounds_count_and_bytes_and_keeps_oversized_items():
    sizes = [5, 5, 5, 50, 5]
    chunks = list(chunk(sizes, max_count=2, max_bytes=12, size_of=lambda s: s))
    assert chunks == [[5, 5], [5], [50], [5]]
    objs = [ObjectWrite(i, f"u{i}", {"body": "x" * 1000}) for i in range(10)]
    assert [len(c) for c in chunk(objs, 100, 9000, lambda o: o.size)] == [2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="batch limits must be positive"):
        list(chunk(sizes, 0, 10, lambda s: s))


class ReadOnlyStore(FlakyStore):
    """A store whose shard turned read-only: like Weaviate 1.39, it names one refused object per batch
    and stores none of them."""

    def __init__(self, read_only_from_call: int) -> None:
        super().__init__()
        self.read_only_from_call = read_only_from_call

    def send(self, items: list[int]) -> dict[int, str]:
        if self.calls + 1 >= self.read_only_from_call:
            self.calls += 1
            self.sent.append(list(items))
            return {0: "store is read-only due to: manually set by user"}
        return super().send(items)


def test_a_read_only_shard_stops_the_step_and_refuses_the_whole_batch():
    store = ReadOnlyStore(read_only_from_call=2)
    processor = _processor(store)
    assert processor.write_batch([1, 2, 3]) == [1, 2, 3]
    with pytest.raises(WritesRefusedError) as raised:
        processor.write_batch([4, 5, 6, 7])
    report = processor.report
    # Not one failure among four under a threshold: every object of the batch, none taken as landed.
    assert (report.written, report.failed, report.refused, report.gave_up) == (3, 4, 4, 0)
    assert [f.key for f in report.failures] == [4, 5, 6, 7]
    assert all("shard is read-only" in f.message for f in report.failures)
    assert store.calls == 2  # not retried: it lasts until an operator acts
    assert "4 objects refused (rows 4, 5, 6, 7)" in str(raised.value)


def test_a_read_only_refusal_raised_by_the_client_is_a_refusal_too():
    error = RuntimeError(
        "Every object failed during insertion. Here is the set of all errors: "
        "store is read-only due to: disk usage too high"
    )
    store = FlakyStore(raise_on_calls=[1], error=error)
    processor = _processor(store)
    with pytest.raises(WritesRefusedError):
        processor.write_batch([1, 2])
    assert processor.report.refused == 2 and store.calls == 1


def test_batches_in_flight_from_several_threads_are_all_counted_with_their_own_numbers():
    """Batches written at once (``TERCUL_SYNC_BATCHES_IN_FLIGHT``) share one report: no count is lost
    to a race and every batch has a number of its own."""
    from concurrent.futures import ThreadPoolExecutor

    store = FlakyStore(bad=range(0, 4_000, 7), flaky=dict.fromkeys(range(1, 4_000, 11), 1))
    processor = _processor(store)
    batches = [list(range(start, start + 10)) for start in range(0, 4_000, 10)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(processor.write_batch, batches))
    r = processor.report
    bad = len(range(0, 4_000, 7))
    assert (r.items, r.batches, r.written, r.failed) == (4_000, 400, 4_000 - bad, bad)
    assert r.retried_batches == len({k // 10 for k in range(1, 4_000, 11) if k % 7})  # bad wins over flaky
    batch_of = {f.key: f.batch for f in r.failures}
    by_number: dict[int, set[int]] = {}
    for key, number in batch_of.items():
        by_number.setdefault(number, set()).add(key // 10)
    assert all(len(batches) == 1 for batches in by_number.values())  # a number names one batch
    assert len(by_number) == len({k // 10 for k in range(0, 4_000, 7)})


def test_withdrawn_failures_leave_the_report_and_are_counted_again_when_written():
    store = FlakyStore(bad=[2, 5])
    processor = _processor(store)
    _run(processor, [[1, 2, 3], [4, 5]])
    assert processor.report.failed_batches == 2
    taken = processor.withdraw(lambda f: f.key == 5)
    assert [f.key for f in taken] == [5]
    r = processor.report
    assert (r.items, r.written, r.failed) == (4, 3, 1)
    assert [f.key for f in r.failures] == [2]
    assert r.failed_batches == 1  # the batch [4, 5] has no failure left; [1, 2, 3] still has one
    store.bad.discard(5)  # written again another way: it lands, and is counted once
    processor.write_batch([5])
    assert (r.items, r.written, r.failed, r.failed_batches) == (5, 4, 1, 1)
    assert processor.withdraw(lambda f: False) == []
