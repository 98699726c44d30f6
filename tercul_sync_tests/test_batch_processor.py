"""The batch processor's retry and error aggregation, with an in-memory sender."""

from __future__ import annotations

from tercul_sync.batch_writer import BatchProcessor, RetrySettings, is_transient
from tercul_sync.objects import ObjectWrite, chunk

FAST = RetrySettings(attempts=3, initial_wait=0.001, max_wait=0.002)


class FlakyStore:
    """A stand-in server: refuses some keys for good, some for a while, raises on chosen calls."""

    def __init__(
        self,
        bad: set[int] = frozenset(),
        flaky: dict[int, int] | None = None,
        raise_on_calls: set[int] = frozenset(),
        error: str = "UNAVAILABLE: connection refused",
    ):
        self.bad, self.flaky, self.raise_on_calls, self.error = bad, dict(flaky or {}), raise_on_calls, error
        self.stored: list[int] = []
        self.calls = 0

    def send(self, items: list[int]) -> dict[int, str]:
        self.calls += 1
        if self.calls in self.raise_on_calls:
            raise ConnectionError(self.error)
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


def test_permanent_failures_are_reported_with_ids_and_the_rest_lands():
    store = FlakyStore(bad={3, 12})
    report = BatchProcessor(store.send, key_of=lambda k: k, retry=FAST).process(
        [list(range(10)), list(range(10, 20))]
    )
    assert sorted(store.stored) == [k for k in range(20) if k not in (3, 12)]
    assert (report.items, report.written, report.failed, report.batches, report.failed_batches) == (
        20,
        18,
        2,
        2,
        2,
    )
    assert [(f.key, f.batch) for f in report.failures] == [(3, 1), (12, 2)]
    assert "published_year" in report.failures[0].message


def test_transient_failures_are_retried_only_for_the_failed_items():
    store = FlakyStore(flaky={4: 2})
    report = BatchProcessor(store.send, key_of=lambda k: k, retry=FAST).process([list(range(8))])
    assert sorted(store.stored) == list(range(8)) and store.stored.count(0) == 1
    assert (report.failed, report.retried_batches, store.calls) == (0, 1, 3)


def test_a_batch_that_raises_does_not_stop_the_others():
    store = FlakyStore(raise_on_calls={1, 2, 3})  # the first batch's three attempts all raise
    report = BatchProcessor(store.send, key_of=lambda k: k, retry=FAST).process([[1, 2], [3, 4]])
    assert store.stored == [3, 4]
    assert report.failed == 2 and report.failures[0].message.startswith("gave up after 3 attempts")


def test_a_permanent_exception_is_not_retried():
    store = FlakyStore(raise_on_calls={1}, error="schema says no")
    report = BatchProcessor(store.send, key_of=lambda k: k, retry=FAST).process([[1, 2], [3]])
    assert store.calls == 2 and store.stored == [3]
    assert {f.key for f in report.failures} == {1, 2}


def test_transient_classification():
    assert is_transient("StatusCode.UNAVAILABLE: failed to connect to all addresses")
    assert is_transient("Unexpected status code: 503")
    assert is_transient("Deadline Exceeded")
    assert not is_transient("invalid integer property 'published_year' on class 'Work'")


def test_chunk_bounds_count_and_bytes_and_keeps_oversized_items():
    sizes = [5, 5, 5, 50, 5]
    chunks = list(chunk(sizes, max_count=2, max_bytes=12, size_of=lambda s: s))
    assert chunks == [[5, 5], [5], [50], [5]]
    objs = [ObjectWrite(i, f"u{i}", {"body": "x" * 1000}) for i in range(10)]
    assert [len(c) for c in chunk(objs, 100, 9000, lambda o: o.size)] == [2, 2, 2, 2, 2]
