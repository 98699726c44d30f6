"""Talking to Weaviate: connecting, batch writes, existence checks, counts.

weaviate-client's synchronous batch call (``insert_many``, one gRPC
BatchObjects request) is used rather than the background batcher
(``batch.fixed_size``): it returns each refused object's index and message
for the batch just sent, raises instead of hiding a connection failure in a
background thread, and has no thread to hang after ``fork``. The retry
policy around it is ours (tenacity, in ``batching``), so it is the same
for every kind of write.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import grpc
import weaviate
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from weaviate.classes.aggregate import Metrics
from weaviate.classes.data import DataObject, ReferenceToMulti
from weaviate.classes.init import AdditionalConfig, Auth, GrpcConfig, Timeout
from weaviate.classes.query import Filter
from weaviate.collections.classes.aggregate import AggregateInteger
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBatchError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
)

from tercul_sync.engine.digests import DIGEST_PROPERTY
from tercul_sync.engine.errors import (
    READ_ONLY_CAUSE,
    WritesRefusedError,
    exception_chain,
    is_transient_error,
)
from tercul_sync.engine.id_tables import IdCounts
from tercul_sync.engine.objects import HASH_PROPERTY, PASSAGE_COUNT_PROPERTY, REF_COUNT_PROPERTY, ObjectWrite
from tercul_sync.engine.registry import PASSAGE_COLLECTION, SOURCE_ID_PROPERTY
from tercul_sync.engine.settings import Settings
from tercul_sync.engine.vectors import VECTOR_HASH_PROPERTY

ID_CHUNK = 5_000  # below QUERY_MAXIMUM_RESULTS (10,000 by default)


_RETRY = Settings().retry  # the defaults: reads happen outside any step's settings too

# Reads and deletes are idempotent: a transient failure is retried like a batch, then raised.
retry_transient = retry(
    retry=retry_if_exception(is_transient_error),
    stop=stop_after_attempt(_RETRY.attempts),
    wait=wait_exponential_jitter(
        multiplier=_RETRY.initial_wait, max=_RETRY.max_wait, jitter=_RETRY.initial_wait
    ),
    reraise=True,
)


class AccessDenied(PermissionError):
    """Weaviate refused a request for lack of a permission: no batch can land, so the step stops at once.

    The message names the permission, the collection and the user, never the key.
    """


# Weaviate's RBAC refusal: "... user 'syncer' has insufficient permissions to update_data
# [[Domain: data, Collection: Work, Tenant: *, Object: *]]"
_RBAC_REFUSAL = re.compile(
    r"user '(?P<user>[^']*)' has insufficient permissions to (?P<action>\w+)\s*\[\[(?P<scope>[^\]]*)\]\]"
)


def access_denied_message(text: str) -> str | None:
    """A clear sentence for Weaviate's RBAC refusal in ``text`` (its exact form only), else None."""
    m = _RBAC_REFUSAL.search(text)
    if m is None:
        return None
    scope = {k.strip(): v.strip() for k, _, v in (part.partition(":") for part in m["scope"].split(","))}
    where = f"collection {scope['Collection']}" if scope.get("Collection") else m["scope"].strip()
    return (
        f"Weaviate refused: user {m['user']!r} lacks the permission {m['action']} on {where} "
        f"(RBAC domain {scope.get('Domain', '?')}); grant it to the user's role (see docs/security.md)"
    )


def _grpc_code(exc: BaseException) -> Any:
    code = getattr(exc, "code", None)
    return code() if isinstance(exc, grpc.RpcError) and callable(code) else None


def as_access_denied(exc: BaseException) -> AccessDenied | None:
    """``exc`` (or a cause of it) as an ``AccessDenied`` when it is Weaviate's 403 / PERMISSION_DENIED."""
    for link in exception_chain(exc):
        if isinstance(link, AccessDenied):
            return link
        status = link.status_code if isinstance(link, UnexpectedStatusCodeError) else None
        denied = status in (403, grpc.StatusCode.PERMISSION_DENIED)
        if denied or _grpc_code(link) == grpc.StatusCode.PERMISSION_DENIED:
            text = str(link)
            return AccessDenied(access_denied_message(text) or f"Weaviate refused (forbidden): {text[:300]}")
    return None


_ENV_LOCK = threading.Lock()


@contextmanager
def _ssl_cert_file(path: str | None) -> Iterator[None]:
    """``SSL_CERT_FILE`` set to ``path`` while a client opens its HTTP connections.

    weaviate-client 4.24 takes no CA for REST; with ``trust_env`` its httpx
    transports read ``SSL_CERT_FILE`` when they are made, which is only while
    connecting. The variable is restored right after.
    """
    if path is None:
        yield
        return
    with _ENV_LOCK:
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = path
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = before


def connect(
    url: str,
    grpc_port: int,
    api_key: str | None,
    timeout_s: float,
    connect_within_s: float = 30.0,
    ca_bundle: str | Path | None = None,
) -> weaviate.WeaviateClient:
    """Open a client, retrying while the server is starting or briefly away.

    With an ``https`` URL, HTTP and gRPC both use TLS; ``ca_bundle`` (a PEM
    file, ``WEAVIATE_CA_BUNDLE``) then replaces the public roots for both.
    """
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise ValueError(f"WEAVIATE_URL must look like http://host:port, got {url!r}")
    secure = parsed.scheme == "https"
    port = parsed.port or (443 if secure else 80)
    bundle = str(ca_bundle) if ca_bundle and secure else None
    grpc_config = None
    if bundle is not None:
        try:
            roots = Path(bundle).read_bytes()
        except OSError as exc:
            raise ValueError(f"WEAVIATE_CA_BUNDLE {bundle} cannot be read: {exc.strerror}") from None
        grpc_config = GrpcConfig(credentials=grpc.ssl_channel_credentials(root_certificates=roots))

    @retry(
        retry=retry_if_exception_type((WeaviateConnectionError, WeaviateGRPCUnavailableError, OSError)),
        stop=stop_after_delay(connect_within_s),
        wait=wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.2),
        reraise=True,
    )
    def _open() -> weaviate.WeaviateClient:
        with _ssl_cert_file(bundle):
            return weaviate.connect_to_custom(
                http_host=host,
                http_port=port,
                http_secure=secure,
                grpc_host=host,
                grpc_port=grpc_port,
                grpc_secure=secure,
                auth_credentials=Auth.api_key(api_key) if api_key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(init=10, query=timeout_s, insert=timeout_s),
                    trust_env=bundle is not None,
                    grpc_config=grpc_config,
                ),
            )

    return _open()


def _references(o: ObjectWrite) -> dict[str, Any] | None:
    """An object's references as the client sends them; multi-target ones name their collection."""
    if not o.references:
        return None
    return {
        name: ReferenceToMulti(target_collection=o.reference_collections[name], uuids=uuids)
        if name in o.reference_collections
        else uuids
        for name, uuids in o.references.items()
    }


_ALL_FAILED = re.compile(r"Here is the set of all errors: (.*)", re.S)
# gRPC's refusal of a request over the maximum message size, on the client's side or the server's.
_TOO_LARGE = re.compile(r"(?:sent|received) message larger than max \((\d+) vs\. (\d+)\)", re.I)


def send_objects(
    client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
) -> dict[int, str]:
    """Upsert one batch; return ``{index: message}`` for the objects Weaviate refused.

    ``insert_many`` raises when every object of a batch failed, with only the
    set of messages. One distinct message belongs to every object; several
    are attributed exactly by splitting the batch in two and sending again.
    A batch over gRPC's maximum message size is split in two as well, down to
    one object, which is then refused with its size and the limit. A refusal
    for lack of a permission raises ``AccessDenied``: no other batch would land.
    """
    col = client.collections.use(collection)
    objs = [
        DataObject(properties=o.properties, uuid=o.uuid, references=_references(o), vector=o.vectors or None)
        for o in items
    ]
    try:
        result = col.data.insert_many(objs)
    except WeaviateInsertManyAllFailedError as exc:
        match = _ALL_FAILED.search(str(exc))
        messages = set(match.group(1).split("\n")) if match else {str(exc)}
        denied = next((m for m in map(access_denied_message, messages) if m), None)
        if denied:
            raise AccessDenied(denied) from None
        if len(messages) == 1 or len(items) == 1:
            return dict.fromkeys(range(len(items)), "; ".join(sorted(messages)))
        return _split(client, collection, items)
    except WeaviateBatchError as exc:
        too_large = _TOO_LARGE.search(str(exc))
        if too_large is None:
            raise
        if len(items) > 1:
            return _split(client, collection, items)
        return {
            0: f"object of {too_large.group(1)} bytes is larger than Weaviate's gRPC maximum message size "
            f"({too_large.group(2)} bytes, the server's GRPC_MAX_MESSAGE_SIZE)"
        }
    denied = next((m for m in (access_denied_message(e.message) for e in result.errors.values()) if m), None)
    if denied:
        raise AccessDenied(denied)
    return {i: err.message for i, err in result.errors.items()}


def _split(client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]) -> dict[int, str]:
    half = len(items) // 2
    left = send_objects(client, collection, items[:half])
    right = send_objects(client, collection, items[half:])
    return left | {half + i: m for i, m in right.items()}


def _fetch_by_ids(
    client: weaviate.WeaviateClient,
    collection: str,
    uuids: Iterable[str],
    properties: list[str],
    vectors: list[str] | None = None,
) -> Iterator[Any]:
    """The objects among ``uuids`` that exist, with ``properties``, in chunks a query accepts."""
    wanted = sorted(set(uuids))
    col = client.collections.use(collection)
    for start in range(0, len(wanted), ID_CHUNK):
        part = wanted[start : start + ID_CHUNK]
        yield from col.query.fetch_objects(
            filters=Filter.by_id().contains_any(part),
            limit=len(part),
            return_properties=properties,
            include_vector=vectors or False,
        ).objects


@retry_transient
def existing_uuids(client: weaviate.WeaviateClient, collection: str, uuids: Iterable[str]) -> set[str]:
    """Which of ``uuids`` have an object in ``collection`` (found by id, through the index).

    Usually every one does (targets of live edges, objects just written), so each chunk is first
    counted: a count is one number to decode, where fetching turns every object into a Python one
    (a third of the client's CPU). Only a chunk whose count falls short is fetched.
    """
    wanted = sorted(set(uuids))
    col = client.collections.use(collection)
    found: set[str] = set()
    for start in range(0, len(wanted), ID_CHUNK):
        part = wanted[start : start + ID_CHUNK]
        counted = col.aggregate.over_all(filters=Filter.by_id().contains_any(part), total_count=True)
        if counted.total_count == len(part):
            found.update(part)
        else:
            found.update(str(o.uuid) for o in _fetch_by_ids(client, collection, part, []))
    return found


@retry_transient
def count_objects(client: weaviate.WeaviateClient, collection: str) -> int:
    return int(client.collections.use(collection).aggregate.over_all(total_count=True).total_count or 0)


@retry_transient
def delete_uuids(
    client: weaviate.WeaviateClient, collection: str, uuids: Sequence[str], unmatched: list[str] | None = None
) -> int:
    """Delete objects by id, in chunks that ``delete_many`` accepts whole; return how many went.

    A chunk the id filter matched only in part holds ids gone already, or objects whose index
    entries a crash lost. Its ids are looked up one by one (``delete_by_uuid``), or, given
    ``unmatched``, added to it: the caller looks them up only when its counts say an object is
    left over (ids read again inside the overlap window are gone already, and one request each
    would cost seconds)."""
    col = client.collections.use(collection)
    deleted = 0
    for start in range(0, len(uuids), ID_CHUNK):
        part = list(uuids[start : start + ID_CHUNK])
        matched = 0
        while True:  # delete_many removes at most QUERY_MAXIMUM_RESULTS per call
            res = col.data.delete_many(where=Filter.by_id().contains_any(part))
            check_deleted(col, res)
            deleted += res.successful
            matched += res.matches
            if res.matches == 0 or res.successful == 0:
                break
        if matched < len(part) and unmatched is not None:
            unmatched.extend(part)
        elif matched < len(part):
            deleted += delete_by_uuid(client, collection, part)
    return deleted


@retry_transient
def delete_by_uuid(client: weaviate.WeaviateClient, collection: str, uuids: Sequence[str]) -> int:
    """Delete objects one by one, by uuid: looked up in the object store, not through the index
    (so this reaches an object whose index entries were lost). Returns how many existed (Weaviate
    answers a delete of a missing object as a success, so each is asked about first)."""
    col = client.collections.use(collection)
    present = [u for u in uuids if col.data.exists(u)]
    for u in present:
        col.data.delete_by_id(u)
    return len(present)


def check_deleted(col: Any, res: Any) -> None:
    """Raise when ``delete_many`` matched objects it could not delete (it does not raise by itself).

    Its per-object messages cannot be had here (weaviate-client 4.24 fails to parse the verbose
    reply of a refused delete), so the shards' status says why: a read-only shard (disk full, or
    set by an operator) is ``WritesRefusedError``; anything else a ``RuntimeError``.
    """
    if not res.failed:
        return
    statuses = sorted({s.status for s in col.config.get_shards()})
    message = f"{res.failed} of {res.matches} deletes failed; shard status {', '.join(statuses)}"
    if "READONLY" in statuses:
        raise WritesRefusedError(READ_ONLY_CAUSE, message, res.failed, [], what="deletes")
    raise RuntimeError(f"{col.name}: Weaviate failed to delete: {message}")


@retry_transient
def stored_hashes(
    client: weaviate.WeaviateClient, collection: str, uuids: Iterable[str], prop: str = HASH_PROPERTY
) -> dict[str, str | None]:
    """``{uuid: content hash}`` (or another property, ``prop``) for the objects among ``uuids`` that exist."""
    return {str(o.uuid): o.properties.get(prop) for o in _fetch_by_ids(client, collection, uuids, [prop])}


@retry_transient
def stored_vectors(
    client: weaviate.WeaviateClient,
    collection: str,
    uuids: Iterable[str],
    names: list[str],
    hash_property: str = VECTOR_HASH_PROPERTY,
) -> dict[str, tuple[str | None, dict[str, list[float]]]]:
    """``{uuid: (hash_property as stored, {name: vector})}`` for the objects among ``uuids`` that exist."""
    out: dict[str, tuple[str | None, dict[str, list[float]]]] = {}
    for o in _fetch_by_ids(client, collection, uuids, [hash_property], names):
        vectors = {k: list(v) for k, v in (o.vector or {}).items() if k in names and v}
        out[str(o.uuid)] = (o.properties.get(hash_property), vectors)
    return out


@retry_transient
def stored_source_ids(
    client: weaviate.WeaviateClient, collection: str, keep: Callable[[int], bool] = lambda _: True
) -> dict[int, str]:
    """``{source_id: uuid}`` of the objects in ``collection`` whose ``source_id`` ``keep`` accepts
    (a cursor walk, no offset limit; only those kept are held)."""
    out: dict[int, str] = {}
    walk = client.collections.use(collection).iterator(
        return_properties=[SOURCE_ID_PROPERTY], cache_size=5_000
    )
    for obj in walk:
        sid = obj.properties.get(SOURCE_ID_PROPERTY)
        # An INT property: the client types property values as the union of every kind.
        if sid is not None and keep(int(cast("int", sid))):
            out[int(cast("int", sid))] = str(obj.uuid)
    return out


def _between(low: int, high: int, prop: str = SOURCE_ID_PROPERTY) -> Any:
    return Filter.by_property(prop).greater_or_equal(low) & Filter.by_property(prop).less_than(high)


@retry_transient
def count_between(client: weaviate.WeaviateClient, collection: str, low: int, high: int) -> int:
    """Objects whose ``source_id`` is in ``[low, high)``."""
    res = client.collections.use(collection).aggregate.over_all(filters=_between(low, high), total_count=True)
    return int(res.total_count or 0)


@retry_transient
def reference_sum_between(client: weaviate.WeaviateClient, collection: str, low: int, high: int) -> int:
    """References carried by the objects whose ``source_id`` is in ``[low, high)``."""
    res = client.collections.use(collection).aggregate.over_all(
        filters=_between(low, high), return_metrics=Metrics(REF_COUNT_PROPERTY).integer(sum_=True)
    )
    metric = res.properties[REF_COUNT_PROPERTY]
    return int(metric.sum_ or 0) if isinstance(metric, AggregateInteger) else 0


@retry_transient
def digest_between(
    client: weaviate.WeaviateClient,
    collection: str,
    low: int,
    high: int,
    summed: Sequence[str] = (DIGEST_PROPERTY,),
    prop: str = SOURCE_ID_PROPERTY,
    where: Any = None,
) -> tuple[int, int]:
    """``(objects, sum of their ``summed`` properties)`` over the objects whose ``prop``
    (``source_id``) is in ``[low, high)`` and that match ``where`` (an object without a digest
    counts, adding nothing)."""
    filters = _between(low, high, prop)
    res = client.collections.use(collection).aggregate.over_all(
        filters=filters if where is None else filters & where,
        total_count=True,
        return_metrics=[Metrics(p).integer(sum_=True) for p in summed],
    )
    metrics = [res.properties[p] for p in summed]
    total = sum(int(m.sum_ or 0) for m in metrics if isinstance(m, AggregateInteger))
    return int(res.total_count or 0), total


@retry_transient
def objects_between(client: weaviate.WeaviateClient, collection: str, low: int, high: int) -> dict[int, int]:
    """``{source_id: sync_ref_count}`` of the objects whose ``source_id`` is in ``[low, high)``."""
    found = client.collections.use(collection).query.fetch_objects(
        filters=_between(low, high),
        limit=ID_CHUNK,
        return_properties=[SOURCE_ID_PROPERTY, REF_COUNT_PROPERTY],
    )
    return {
        int(cast("int", o.properties.get(SOURCE_ID_PROPERTY))): int(
            cast("int", o.properties.get(REF_COUNT_PROPERTY) or 0)
        )
        for o in found.objects
    }


@retry_transient
def properties_between(
    client: weaviate.WeaviateClient, collection: str, low: int, high: int, names: Sequence[str]
) -> list[dict[str, Any]]:
    """The properties ``names`` of the objects whose ``source_id`` is in ``[low, high)`` (at most
    ``ID_CHUNK`` ids: each object's id is its row's, so as many objects at most)."""
    found = client.collections.use(collection).query.fetch_objects(
        filters=_between(low, high), limit=ID_CHUNK, return_properties=list(names)
    )
    return [dict(o.properties) for o in found.objects]


@retry_transient
def other_reference_counts(client: weaviate.WeaviateClient, collection: str, expected: IdCounts) -> list[int]:
    """The ``source_id`` of every object whose ``sync_ref_count`` is not ``expected`` (0 when absent),
    from a cursor walk (no filter, no aggregate), compared object by object: none of them is held."""
    walk = client.collections.use(collection).iterator(
        return_properties=[SOURCE_ID_PROPERTY, REF_COUNT_PROPERTY], cache_size=5_000
    )
    off: list[int] = []
    for o in walk:
        sid = o.properties.get(SOURCE_ID_PROPERTY)
        if sid is not None and expected.get(int(cast("int", sid)), 0) != int(
            cast("int", o.properties.get(REF_COUNT_PROPERTY) or 0)
        ):
            off.append(int(cast("int", sid)))
    return off


@retry_transient
def source_id_bounds(client: weaviate.WeaviateClient, collection: str) -> tuple[int, int] | None:
    """The smallest and largest ``source_id`` stored; None when the collection is empty."""
    res = client.collections.use(collection).aggregate.over_all(
        return_metrics=Metrics(SOURCE_ID_PROPERTY).integer(minimum=True, maximum=True)
    )
    metric = res.properties[SOURCE_ID_PROPERTY]
    if not isinstance(metric, AggregateInteger) or metric.minimum is None or metric.maximum is None:
        return None
    return int(metric.minimum), int(metric.maximum)


def first_passages(parent_collection: str, prop: str | None = None) -> Any:
    """The filter of the passages at position 0 of ``parent_collection``'s texts (of ``prop`` only,
    if given)."""
    where = Filter.by_property("parent_collection").equal(parent_collection) & Filter.by_property(
        "position"
    ).equal(0)
    return where if prop is None else where & Filter.by_property("property").equal(prop)


@retry_transient
def count_first_passages(
    client: weaviate.WeaviateClient,
    parent_collection: str,
    passages: str = PASSAGE_COLLECTION,
    prop: str | None = None,
) -> int:
    """Passages at position 0 whose parent is of ``parent_collection`` (of its text ``prop`` only,
    if given): one per parent that has any."""
    res = client.collections.use(passages).aggregate.over_all(
        filters=first_passages(parent_collection, prop), total_count=True
    )
    return int(res.total_count or 0)


@retry_transient
def passage_counts(
    client: weaviate.WeaviateClient, passages: str, parent_collection: str, prop: str
) -> tuple[int, int]:
    """``(passages of parent_collection's texts, their number as the parents' first passages of
    prop record it)``: equal when no passage is missing or left over (``parity.py``)."""
    col = client.collections.use(passages)
    stored = col.aggregate.over_all(
        filters=Filter.by_property("parent_collection").equal(parent_collection), total_count=True
    )
    recorded = col.aggregate.over_all(
        filters=first_passages(parent_collection, prop),
        return_metrics=Metrics(PASSAGE_COUNT_PROPERTY).integer(sum_=True),
    )
    metric = recorded.properties[PASSAGE_COUNT_PROPERTY]
    return int(stored.total_count or 0), int(metric.sum_ or 0) if isinstance(metric, AggregateInteger) else 0
