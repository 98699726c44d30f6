"""Transient or permanent: failures classified by what they are, the way weaviate-client raises them."""

from __future__ import annotations

import sqlite3

import grpc
import httpx
import psycopg2
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from weaviate.exceptions import (
    InsufficientPermissionsError,
    UnexpectedStatusCodeError,
    WeaviateBatchError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateQueryError,
    WeaviateRetryError,
    WeaviateTimeoutError,
)

from tercul_sync.engine.errors import (
    READ_ONLY_CAUSE,
    WritesRefusedError,
    describe,
    is_transient_error,
    is_transient_message,
    refusal_cause,
    refused_by_infrastructure,
)

pytestmark = pytest.mark.unit


class FakeRpcError(grpc.RpcError, grpc.Call):
    """What grpcio raises from a failed call: an RpcError that is also a Call with a status code."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details or code.name

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    # the rest of grpc.Call, unused here
    def initial_metadata(self):
        return None

    def trailing_metadata(self):
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self):
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


def _http_error(status: int) -> UnexpectedStatusCodeError:
    request = httpx.Request("POST", "http://weaviate:8080/v1/batch/objects")
    response = httpx.Response(status, json={"error": [{"message": "nope"}]}, request=request)
    return UnexpectedStatusCodeError("Batch objects", response)


def _raised_inside_rpc_error(code: grpc.StatusCode, make: type[Exception], explicit_cause: bool) -> Exception:
    """Raise as weaviate-client does: its own error inside ``except RpcError`` (with or without ``from``)."""
    try:
        try:
            raise FakeRpcError(code, f"{code.name.lower()} from the server")
        except grpc.RpcError as e:
            error = (
                make(str(e.details()))
                if make is WeaviateBatchError
                else make(str(e.details()), "GRPC search")
            )
            if explicit_cause:
                raise error from e
            raise error  # noqa: B904 (implicit context, exactly as weaviate-client's sync batch does)
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "exc",
    [
        WeaviateConnectionError("connection refused"),
        WeaviateGRPCUnavailableError("1.39.0", ("127.0.0.1", 50051)),
        WeaviateTimeoutError("read timed out"),
        WeaviateRetryError("UNAVAILABLE", 4),
        WeaviateClosedClientError(),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_and_timeout_errors_are_transient(exc):
    assert is_transient_error(exc)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_http_status_too_many_and_server_errors_are_transient(status):
    exc = _http_error(status)
    assert exc.status_code == status  # a real httpx.Response went in
    assert is_transient_error(exc)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_http_status_client_errors_are_permanent(status):
    assert not is_transient_error(_http_error(status))


def test_httpx_status_errors_are_classified_by_status():
    request = httpx.Request("GET", "http://weaviate:8080/v1/meta")
    for status, transient in ((503, True), (429, True), (401, False), (422, False)):
        response = httpx.Response(status, request=request)
        exc = httpx.HTTPStatusError("status", request=request, response=response)
        assert is_transient_error(exc) is transient, status


@pytest.mark.parametrize("make", [WeaviateBatchError, WeaviateQueryError], ids=lambda c: c.__name__)
@pytest.mark.parametrize("explicit_cause", [True, False], ids=["from", "context"])
@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_weaviate_errors_raised_from_grpc_take_the_grpc_status(make, explicit_cause, code, transient):
    exc = _raised_inside_rpc_error(code, make, explicit_cause)
    assert isinstance(exc, make)
    assert is_transient_error(exc) is transient


@pytest.mark.parametrize(
    ("details", "transient"),
    [
        ("aggregate: tried to browse non-existing index for Category_v1", True),
        ("parse params: could not find class Author in schema", True),
        ("explorer: get class: vectorSearch: invalid filter", False),
    ],
)
def test_a_collection_not_yet_loaded_is_transient_though_grpc_unknown_is_not(details, transient):
    # How the server answers a read of a collection made a moment ago by another process (or not yet
    # applied by a cluster follower): gRPC UNKNOWN, which alone is permanent; its words decide.
    cause = FakeRpcError(grpc.StatusCode.UNKNOWN, details)
    try:
        try:
            raise cause
        except grpc.RpcError as rpc:
            raise WeaviateQueryError(str(rpc.details()), "GRPC search") from rpc
    except WeaviateQueryError as exc:
        assert is_transient_error(exc) is transient


def test_the_weaviate_error_alone_says_nothing_and_is_permanent():
    # Same types, no gRPC error behind them: nothing says "retry", so it is not retried.
    assert not is_transient_error(WeaviateBatchError("unavailable"))
    assert not is_transient_error(WeaviateQueryError("timeout", "GRPC search"))


def test_permission_denied_over_grpc_is_permanent():
    exc = InsufficientPermissionsError(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED))
    assert not is_transient_error(exc)


def _db_error(cls: type[DBAPIError], orig: Exception, invalidated: bool = False) -> DBAPIError:
    return cls("SELECT id FROM works", {}, orig, connection_invalidated=invalidated)


def test_database_errors():
    dropped = psycopg2.OperationalError("server closed the connection unexpectedly")
    assert is_transient_error(_db_error(OperationalError, dropped))
    # SQLite uses OperationalError for a missing table: retrying would not mend it
    assert not is_transient_error(
        _db_error(OperationalError, sqlite3.OperationalError("no such table: works"))
    )
    assert not is_transient_error(_db_error(ProgrammingError, psycopg2.ProgrammingError("syntax error")))
    # ... but a connection the pool found dead is worth a retry, whatever the database
    assert is_transient_error(_db_error(DBAPIError, sqlite3.OperationalError("disk I/O"), invalidated=True))


def test_plain_errors_are_permanent():
    assert not is_transient_error(ValueError("invalid literal for int() with base 10: 'lots'"))
    assert not is_transient_error(KeyError("title"))
    assert not is_transient_error(RuntimeError("unavailable, timed out"))  # text alone never decides


def test_the_chain_is_followed_to_its_first_verdict_and_survives_a_cycle():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as e:
            raise ValueError("could not send") from e
    except ValueError as outer:
        assert is_transient_error(outer)
    first, second = ValueError("a"), KeyError("b")
    first.__context__, second.__context__ = second, first
    assert not is_transient_error(first)  # terminates, and nothing in the loop says transient


@pytest.mark.parametrize(
    "message",
    [
        "StatusCode.UNAVAILABLE: failed to connect to all addresses",
        "Unexpected status code: 503",
        "status code: 429, too many requests",
        "Deadline Exceeded",
        "context deadline exceeded",
        "connection reset by peer",
        "dial tcp 10.0.0.3:7001: connect: connection refused",
        "request timed out",
        "RESOURCE_EXHAUSTED: too many concurrent requests",
        "cannot reach enough replicas: required 2 replicas, got 1: 127.0.0.12:55729: status code: 404",
        "failed to execute query: rpc error: code = Canceled desc = grpc: the client connection is closing",
        "aggregate: tried to browse non-existing index for Category_v1",
    ],
)
def test_transient_batch_messages(message):
    assert is_transient_message(message)


@pytest.mark.parametrize(
    "message",
    [
        "invalid integer property 'published_year' on class 'Work': requires an integer, got string",
        "id '4b1f0a66-...' already exists",
        "no such class with name 'Work' found in the schema",
        "status code: 422, unprocessable entity",
        "vector lengths don't match: 384 vs 768",
        "",
    ],
)
def test_permanent_batch_messages(message):
    assert not is_transient_message(message)


def test_describe_names_the_type():
    assert describe(ValueError("bad row")) == "ValueError: bad row"


# Weaviate's words for a read-only store (storagestate.ErrStatusReadOnly, ErrStatusReadOnlyWithReason),
# as a batch message (the first is what 1.39 answers after update_shards(status="READONLY")), in
# an HTTP 500 body (a delete by id) and behind a gRPC status.
READ_ONLY_MESSAGES = [
    "store is read-only due to: manually set by user",
    "store is read-only due to: disk usage too high",
    "put object: store is read-only due to: resource pressure",
    "store is read-only",
    "RESOURCE_EXHAUSTED: shard is read-only",
]


@pytest.mark.parametrize("message", READ_ONLY_MESSAGES)
def test_a_read_only_store_is_a_refusal_neither_transient_nor_a_data_error(message):
    assert refusal_cause(message) == READ_ONLY_CAUSE
    assert not is_transient_message(message)  # retrying in the step would not mend it


@pytest.mark.parametrize(
    "message",
    [
        "invalid integer property 'published_year' on class 'Work': requires an integer, got string",
        "StatusCode.UNAVAILABLE: failed to connect to all addresses",
        "read timed out",
        "",
    ],
)
def test_other_messages_are_no_refusal(message):
    assert refusal_cause(message) is None


def test_a_read_only_http_500_is_not_retried_though_500_is_transient():
    request = httpx.Request("DELETE", "http://weaviate:8080/v1/objects/Work/4b1f0a66")
    body = {"error": [{"message": 'delete local object: shard="x": store is read-only due to: disk usage'}]}
    exc = UnexpectedStatusCodeError(
        "Object could not be deleted.", httpx.Response(500, json=body, request=request)
    )
    assert refused_by_infrastructure(exc) == READ_ONLY_CAUSE
    assert not is_transient_error(exc)
    assert is_transient_error(_http_error(500))  # an ordinary 500 still is


def test_a_read_only_refusal_behind_a_grpc_status_is_found_in_the_chain():
    exc = _raised_inside_rpc_error(grpc.StatusCode.UNAVAILABLE, WeaviateBatchError, explicit_cause=True)
    assert refused_by_infrastructure(exc) is None
    try:
        try:
            raise FakeRpcError(
                grpc.StatusCode.FAILED_PRECONDITION, "store is read-only due to: resource pressure"
            )
        except grpc.RpcError as e:
            raise WeaviateBatchError(str(e.details())) from e
    except WeaviateBatchError as outer:
        assert refused_by_infrastructure(outer) == READ_ONLY_CAUSE
        assert not is_transient_error(outer)


def test_the_refusal_error_names_the_cause_the_rows_and_the_remedy():
    exc = WritesRefusedError(READ_ONLY_CAUSE, "store is read-only due to: manually set by user", 7, [3, 5, 8])
    text = str(exc)
    assert text.startswith("Weaviate refused writes: shard is read-only (disk full or set by an operator)")
    assert "7 objects refused (rows 3, 5, 8, ...)" in text
    assert "manually set by user" in text and 'update_shards(status="READY")' in text
    assert not is_transient_error(exc)
