"""Transient or permanent: what a failure is decides whether it is retried.

A whole-call failure (an exception) is classified by what it is: its type,
its HTTP status, its gRPC status code, looking through the chain of causes
(weaviate-client raises its own errors from inside ``except RpcError``).
Only the per-object messages of a batch result, which are plain strings,
are classified by their text.

Transient: connection refused or reset, timeouts, HTTP 429 and 5xx, gRPC
UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and CANCELLED, a
database connection that dropped, and a collection that the node has not
loaded yet (by the server's words, ``NOT_YET_LOADED_MARKERS``). Permanent:
everything else, notably HTTP 401, 403 and 422 and gRPC PERMISSION_DENIED,
UNAUTHENTICATED and INVALID_ARGUMENT.

A third kind is neither: a **refusal by the infrastructure**. A Weaviate
shard whose disk filled up (``DISK_USE_READONLY_PERCENTAGE``) or that an
operator set ``READONLY`` refuses every changed write with "store is
read-only due to: ...", and stays so until someone frees space and sets it
``READY`` again. Retrying in the step would not mend it, and counting it as
a per-row failure would let a few refused rows pass under the failure rule
as a data problem. ``refusal_cause`` recognises it (by the server's words:
whether it arrives as a batch message, an HTTP 500 body or a gRPC
FAILED_PRECONDITION, the text is the only thing that says it), and the batch
processor stops the step with ``WritesRefusedError``.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
from sqlalchemy.exc import DBAPIError, OperationalError
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,
    WeaviateTimeoutError,
)

TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        # The server reset the stream ("Received RST_STREAM with error code 8"): a cluster node whose
        # replica was killed while the batch was in flight (seen in CI's test_cluster). We never
        # cancel a call ourselves, and an upsert sent again is the same object.
        grpc.StatusCode.CANCELLED,
    }
)
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateTimeoutError,
    WeaviateRetryError,  # weaviate-client's own retries of UNAVAILABLE ran out
    WeaviateClosedClientError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)

# Per-object messages of a batch result: the server's words, the only place text decides.
TRANSIENT_MESSAGE_MARKERS = (
    "unavailable",
    "connection refused",
    "connection reset",
    "timed out",
    "timeout",
    "deadline exceeded",
    "too many requests",
    "resource exhausted",
    "resource_exhausted",
    "status code: 429",
    "status code: 500",
    "status code: 502",
    "status code: 503",
    "status code: 504",
    # A cluster whose replica just went down: QUORUM is met again once the others stop waiting for it.
    "cannot reach enough replicas",
    # A node's own gRPC connection to a replica that was killed while the batch was in flight.
    "the client connection is closing",
)

# The server's words for a collection its schema lists that this node has not loaded yet: its index
# right after another step's process made it ("tried to browse non-existing index for Category_v1",
# seen in a first multiprocess full_sync), or, on a cluster, the class itself before a follower applied
# the schema change ("could not find class Author in schema"). Both pass within a second, and come as
# gRPC UNKNOWN, which says nothing; a collection that is really gone still fails once retries run out.
NOT_YET_LOADED_MARKERS = ("tried to browse non-existing index", "could not find class")


# The server's words for a store that refuses writes (storagestate.ErrStatusReadOnly in Weaviate).
READ_ONLY_MARKERS = ("store is read-only", "shard is read-only", "read-only due to")
READ_ONLY_CAUSE = "shard is read-only (disk full or set by an operator)"


class WritesRefusedError(RuntimeError):
    """Weaviate refused writes for a reason of its own (a read-only shard), not because of the data.

    Not retried within the step nor by Dagster: it lasts until an operator acts.
    """

    def __init__(
        self, cause: str, server_message: str, refused: int, sample: list[object], what: str = "objects"
    ) -> None:
        self.cause, self.server_message, self.refused, self.sample = cause, server_message, refused, sample
        ids = ", ".join(str(k) for k in sample)
        rows = f" (rows {ids}{', ...' if refused > len(sample) else ''})" if sample else ""
        super().__init__(
            f"Weaviate refused writes: {cause}. {refused} {what if refused != 1 else what.rstrip('s')} "
            f"refused{rows}; the server said: "
            f"{server_message!r}. The step stopped there and moved no cursor. Free disk space below "
            "DISK_USE_READONLY_PERCENTAGE (or ask whoever set it), set the shards READY "
            '(collection.config.update_shards(status="READY")) and run again.'
        )


def refusal_cause(message: str) -> str | None:
    """The cause, when a server message says the infrastructure refuses writes; else None."""
    text = message.lower()
    if any(marker in text for marker in READ_ONLY_MARKERS):
        return READ_ONLY_CAUSE
    return None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code):
        value = code()
        return value if isinstance(value, grpc.StatusCode) else None
    return None


def _verdict(exc: BaseException) -> bool | None:
    """True transient, False permanent, None: this link of the chain does not say."""
    if isinstance(exc, UnexpectedStatusCodeError):
        return exc.status_code in TRANSIENT_HTTP_STATUS
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in TRANSIENT_HTTP_STATUS
    code = _grpc_code(exc)
    if code is not None:
        return code in TRANSIENT_GRPC_CODES
    if isinstance(exc, DBAPIError):
        # PostgreSQL reports a dropped or refused connection as OperationalError; SQLite uses the
        # same class for a missing table, which retrying would not mend.
        sqlite = type(exc.orig).__module__.startswith("sqlite3")
        return exc.connection_invalidated or (isinstance(exc, OperationalError) and not sqlite)
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    return None


def refused_by_infrastructure(exc: BaseException) -> str | None:
    """The refusal's cause when a failed call's chain says the store is read-only; else None."""
    for link in exception_chain(exc):
        cause = refusal_cause(str(link))
        if cause:
            return cause
    return None


def is_transient_error(exc: BaseException) -> bool:
    """Whether a failed call is worth retrying, judged by what the exception is.

    A refusal by the infrastructure (a read-only shard) is not, even when it
    comes as an HTTP 500: it lasts until an operator acts.
    """
    if refused_by_infrastructure(exc):
        return False
    if any(not_yet_loaded(str(link)) for link in exception_chain(exc)):
        return True
    for link in exception_chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


def is_transient_message(message: str) -> bool:
    """Whether a batch result's per-object message describes a condition worth retrying."""
    if refusal_cause(message):
        return False
    text = message.lower()
    return any(marker in text for marker in TRANSIENT_MESSAGE_MARKERS) or not_yet_loaded(text)


def not_yet_loaded(message: str) -> bool:
    """Whether a server message says a collection is not loaded on this node yet (NOT_YET_LOADED_MARKERS)."""
    text = message.lower()
    return any(marker in text for marker in NOT_YET_LOADED_MARKERS)


def describe(exc: BaseException) -> str:
    """``Type: message``, the form failures are reported in."""
    return f"{type(exc).__name__}: {exc}"
