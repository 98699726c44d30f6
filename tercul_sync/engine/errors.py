"""Transient or permanent: what a failure is decides whether it is retried.

A whole-call failure (an exception) is classified by what it is: its type,
its HTTP status, its gRPC status code, looking through the chain of causes
(weaviate-client raises its own errors from inside ``except RpcError``).
Only the per-object messages of a batch result, which are plain strings,
are classified by their text.

Transient: connection refused or reset, timeouts, HTTP 429 and 5xx, gRPC
UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED, a database
connection that dropped. Permanent: everything else, notably HTTP 401, 403
and 422 and gRPC PERMISSION_DENIED, UNAUTHENTICATED and INVALID_ARGUMENT.
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
)


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


def is_transient_error(exc: BaseException) -> bool:
    """Whether a failed call is worth retrying, judged by what the exception is."""
    for link in exception_chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


def is_transient_message(message: str) -> bool:
    """Whether a batch result's per-object message describes a condition worth retrying."""
    text = message.lower()
    return any(marker in text for marker in TRANSIENT_MESSAGE_MARKERS)


def describe(exc: BaseException) -> str:
    """``Type: message``, the form failures are reported in."""
    return f"{type(exc).__name__}: {exc}"
