"""The batch processor: sends batches, retries what is transient, reports the rest.

It is generic over what a batch holds: a ``Sender`` takes a list of items,
writes them, and returns ``{index: message}`` for the items the server
refused (or raises when the whole call failed). Entity objects and the
edges pass both go through ``BatchProcessor``, so batching, retries and
error aggregation exist once.

tenacity does the backoff: transient failures (connection refused, 5xx,
gRPC UNAVAILABLE, timeouts; see ``errors``) are retried with exponential backoff and jitter,
only for the items that failed; permanent ones are reported at once with the
item's key (the row id) and the server's message. A batch that fails does
not stop the others.

Except when the infrastructure refuses: a read-only shard (disk full, or set
by an operator; see ``errors.refusal_cause``) is no row's fault and no
number of rows' worth of threshold. The whole batch counts as refused (the
server's attribution cannot be trusted: Weaviate 1.39 reports the refusal on
one object of a shard's batch and stores none of it), the items go to the
report, and ``write_batch`` raises ``WritesRefusedError``: the step stops at
once, fails with the cause, and moves no cursor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from tercul_sync.engine.errors import (
    WritesRefusedError,
    describe,
    is_transient_error,
    is_transient_message,
    refusal_cause,
    refused_by_infrastructure,
)
from tercul_sync.engine.reports import MAX_SAMPLE, ItemFailure, add_counts
from tercul_sync.engine.settings import RetrySettings

T = TypeVar("T")
Sender = Callable[[list[T]], dict[int, str]]
GAVE_UP = "gave up after"


@dataclass
class WriteReport:
    """What a run of the batch processor did, summed over its batches."""

    items: int = 0
    written: int = 0
    failed: int = 0
    gave_up: int = 0  # the failed items that were still failing transiently when the retries ran out
    refused: int = 0  # the failed items the infrastructure refused (a read-only shard)
    batches: int = 0
    failed_batches: int = 0
    retried_batches: int = 0
    failures: list[ItemFailure] = field(default_factory=list)

    def merge(self, other: WriteReport) -> None:
        add_counts(self, other)

    def gave_up_keys(self) -> set[Hashable]:
        """The keys (row ids) of the items that were still failing transiently when retries ran out."""
        return {f.key for f in self.failures if f.message.startswith(GAVE_UP)}

    def sample(self, n: int = MAX_SAMPLE) -> list[dict[str, object]]:
        return [{"id": f.key, "batch": f.batch, "error": f.message} for f in self.failures[:n]]


class _TransientBatchFailure(Exception):
    pass


class BatchProcessor(Generic[T]):
    """Runs batches through a ``Sender`` and aggregates the outcome.

    ``write_batch`` may be called from several threads at once (batches in flight): the report is
    updated under a lock, and each batch gets its own number.
    """

    def __init__(self, send: Sender[T], key_of: Callable[[T], Hashable], retry: RetrySettings) -> None:
        self._send = send
        self._key_of = key_of
        self._retry = retry
        self.report = WriteReport()
        self._lock = threading.Lock()
        self._numbered = 0  # batches handed out a number

    def reject(self, key: Hashable, message: str) -> None:
        """Record an item refused before any send (bad input found while preparing it)."""
        with self._lock:
            r = self.report
            r.items += 1
            r.failed += 1
            r.failures.append(ItemFailure(key, message, r.batches + 1))

    def fail_landed(self, key: Hashable, message: str) -> None:
        """Record as failed an item counted as written that turned out unusable (not findable)."""
        with self._lock:
            r = self.report
            r.written -= 1
            r.failed += 1
            r.failures.append(ItemFailure(key, message, r.batches))

    def withdraw(self, matches: Callable[[ItemFailure], bool]) -> list[ItemFailure]:
        """Take the failures ``matches`` picks out of the report, to be written again another way
        (their new outcome is counted then): they no longer count as items or as failed, and a
        batch left with no failure no longer counts as failed."""
        with self._lock:
            r = self.report
            taken: list[ItemFailure] = []
            kept: list[ItemFailure] = []
            for f in r.failures:
                (taken if matches(f) else kept).append(f)
            r.failures = kept
            r.items -= len(taken)
            r.failed -= len(taken)
            emptied = {f.batch for f in taken} - {f.batch for f in kept}
            r.failed_batches = max(0, r.failed_batches - len(emptied))
        return taken

    def write_batch(self, items: list[T]) -> list[T]:
        """Write one batch; return the items that landed.

        Raises only when no further batch can land: ``WritesRefusedError`` (a read-only shard) or an
        access denial; any other server error is recorded and the next batch goes on.
        """
        with self._lock:
            self._numbered += 1
            number = self._numbered
        pending = list(items)
        last_transient: dict[int, str] = {}
        permanent: list[tuple[T, str]] = []
        attempts = 0
        refusal: tuple[str, str] | None = None  # (cause, the server's message): the infrastructure refused

        def attempt() -> None:
            nonlocal pending, last_transient, attempts, refusal
            attempts += 1
            try:
                errors = self._send(pending)
            except PermissionError:  # weaviate_client.AccessDenied: no batch can land; stop the step now
                raise
            except Exception as exc:  # a whole-call failure: classify it, keep going
                message = describe(exc)
                cause = refused_by_infrastructure(exc)
                if cause:
                    refusal = (cause, message)
                    permanent.extend((item, f"{cause}: {message}") for item in pending)
                    pending = []
                    return
                if not is_transient_error(exc):
                    permanent.extend((item, message) for item in pending)
                    pending = []
                    return
                errors = dict.fromkeys(range(len(pending)), message)
            refused = next(((c, m) for m in errors.values() if (c := refusal_cause(m))), None)
            if refused:  # none of what was sent can be trusted to have landed
                refusal = refused
                permanent.extend((item, f"{refused[0]}: {refused[1]}") for item in pending)
                pending = []
                return
            transient = {i: m for i, m in errors.items() if is_transient_message(m)}
            permanent.extend((pending[i], m) for i, m in errors.items() if i not in transient)
            pending = [pending[i] for i in sorted(transient)]
            last_transient = {k: transient[i] for k, i in enumerate(sorted(transient))}
            if pending:
                raise _TransientBatchFailure(f"{len(pending)} items failed transiently")

        retrying = Retrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry.initial_wait, max=self._retry.max_wait, jitter=self._retry.initial_wait
            ),
            retry=retry_if_exception_type(_TransientBatchFailure),
            reraise=False,
        )
        gave_up = 0
        try:
            retrying(attempt)
        except RetryError:
            gave_up = len(pending)
            permanent.extend(
                (item, f"{GAVE_UP} {attempts} attempts: {last_transient.get(i, 'transient error')}")
                for i, item in enumerate(pending)
            )
        failed_ids = {id(item) for item, _ in permanent}
        landed = [item for item in items if id(item) not in failed_ids]

        refused_keys = [self._key_of(item) for item, m in permanent if refusal and m.startswith(refusal[0])]
        with self._lock:
            r = self.report
            r.items += len(items)
            r.batches += 1
            r.written += len(landed)
            r.failed += len(permanent)
            r.gave_up += gave_up
            r.failed_batches += bool(permanent)
            r.retried_batches += attempts > 1
            r.failures.extend(ItemFailure(self._key_of(item), message, number) for item, message in permanent)
            r.refused += len(refused_keys)
        if refusal is not None:
            raise WritesRefusedError(refusal[0], refusal[1], len(refused_keys), refused_keys[:5])
        return landed
