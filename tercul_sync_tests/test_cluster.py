"""A three-node Weaviate cluster on loopback: replication factor 3, QUORUM writes, one node lost mid-sync.

The nodes are real weaviate-server processes on 127.0.0.11-13, joined by Raft
(``weaviate_server.start_cluster``). A node is SIGKILLed while the sync is writing: QUORUM needs
two replicas of three, so the sync completes. When the node is back and repair has run, a read at
consistency ALL (every replica must answer) shows exact parity.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import weaviate
from pydantic import PrivateAttr
from weaviate.classes.config import ConsistencyLevel

from tercul_sync.devtools import demo_data
from tercul_sync.devtools.weaviate_server import LocalCluster, start_cluster
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.objects import ObjectWrite
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.registry import PASSAGE_COLLECTION, object_uuid, sync_order
from tercul_sync.engine.replication import with_consistency
from tercul_sync.engine.settings import load_settings
from tercul_sync.engine.weaviate_schema import SchemaMismatchError, ensure_schema
from tercul_sync_tests.conftest import ROOT
from tercul_sync_tests.helpers import expected_objects, metadata, run_sync

pytestmark = pytest.mark.services

LOST = 2  # the node that is killed: n3 (the client talks to n1)


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Iterator[LocalCluster]:
    if not os.environ.get("TERCUL_SYNC_HOME"):  # the repository's binary, whatever the working directory
        monkeypatch.setenv("TERCUL_SYNC_HOME", str(ROOT / ".tercul"))
    nodes = start_cluster(tmp_path / "cluster")
    monkeypatch.delenv("TERCUL_SYNC_HOME", raising=False)
    try:
        yield nodes
    finally:
        nodes.stop()


def _members_seen(url: str) -> list[tuple[str, str]]:
    """``(name, status)`` of every node as the node at ``url`` sees it: Weaviate asks each one for its
    status through that node's own cluster API (the node-to-node port)."""
    nodes = httpx.get(f"{url}/v1/nodes", timeout=30).json()["nodes"]
    return sorted((n["name"], n["status"]) for n in nodes)


def _parity_at_all(engine, client: weaviate.WeaviateClient) -> list[str]:
    """What differs: parity of every collection, and every live row's object read by id at ALL."""
    every = with_consistency(client, ConsistencyLevel.ALL)
    problems = []
    for e in sync_order():
        report = check_parity(engine, every, e, [reading.Shard(0, 1)], load_settings())
        if not report.exact:
            problems.append(report.describe())
        collection = every.collections.use(e.collection)
        missing = [
            i for i in expected_objects(engine, e) if not collection.data.exists(object_uuid(e.collection, i))
        ]
        if missing:
            problems.append(
                f"{e.collection}: {len(missing)} objects not on every replica, e.g. {missing[:3]}"
            )
    return problems


def test_sync_survives_a_lost_node_and_reads_at_all_show_parity(cluster, pg_database, monkeypatch):
    from tercul_sync.defs.resources import WeaviateResource

    class NodeKiller(WeaviateResource):
        """The real resource, whose batch sender SIGKILLs one node just before one chosen batch."""

        node_pid: int
        # The first batch: the node is lost before anything reaches it, so repair copies whole
        # objects. (At the third batch, now that a step's shards are one stream, Category was
        # written to all three nodes and then rewritten by the edges step on two: in one CI run of
        # 7bad5c0 the restarted node still served 63 of those stale at ALL 180 s later. Noted in
        # docs/deployment.md, not solved.)
        kill_at_batch: int = 1

        _batches: int = PrivateAttr(default=0)

        def send_objects(
            self, client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
        ) -> dict[int, str]:
            self._batches += 1
            if self._batches == self.kill_at_batch:
                os.kill(self.node_pid, signal.SIGKILL)
            return super().send_objects(client, collection, items)

    # Each node answers its own internal traffic. With one cluster API port for all three (a bug of
    # start_cluster until 2026-12), the first node to bind it answered for every node (each named
    # itself n1 here), and losing that node cut the other two off from each other: a sync hung.
    # (Given a few seconds: a node that has just answered ready may not have gossiped its port yet.)
    everyone = [(f"n{i + 1}", "HEALTHY") for i in range(len(cluster.nodes))]
    deadline = time.monotonic() + 30
    while (seen := [_members_seen(n.url) for n in cluster.nodes]) != [everyone] * len(cluster.nodes):
        assert time.monotonic() < deadline, seen
        time.sleep(1)

    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 2_000, seed=21)
    monkeypatch.setenv("TERCUL_SYNC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("TERCUL_SYNC_VECTORIZER", "none")
    settings = load_settings()
    assert settings.consistency_level == "QUORUM"  # the default with replicas
    killer = NodeKiller(
        url=cluster.url,
        grpc_port=cluster.grpc_port,
        timeout_seconds=60,
        consistency=settings.consistency_level,
        node_pid=cluster.nodes[LOST].process.pid,
    )
    started = time.monotonic()
    # While the lost node is still a member, some writes are refused as transient; retries ride it out.
    result = run_sync(pg_database, cluster.nodes[0], weaviate=killer, retry_attempts=8, retry_max_wait=5)
    print(f"full sync on 3 nodes, one lost at the first batch: {time.monotonic() - started:.1f} s")
    assert result.success
    assert cluster.nodes[LOST].process.wait(10) == -signal.SIGKILL  # it was lost mid-sync
    written = sum(metadata(result, e.collection)["objects_written"] for e in sync_order())
    failed = {e.collection: metadata(result, e.collection) for e in sync_order()}
    failed = {
        k: (m["objects_failed"], m.get("failure_sample")) for k, m in failed.items() if m["objects_failed"]
    }
    assert written > 0 and not failed, failed

    client = wc.connect(cluster.url, cluster.grpc_port, None, timeout_s=60)
    try:
        for name in [*(e.collection for e in sync_order()), PASSAGE_COLLECTION]:
            assert client.collections.use(name).config.get().replication_config.factor == 3, name
        cluster.restart(LOST)
        deadline = time.monotonic() + 180
        while True:
            try:
                problems = _parity_at_all(engine, client)
            except Exception as exc:  # the node is still joining; ALL cannot be had yet
                problems = [f"ALL reads fail: {exc}"]
            if not problems:
                break
            assert time.monotonic() < deadline, problems
            time.sleep(2)
        print(f"parity at ALL {time.monotonic() - started:.1f} s after the sync started")

        # The schema check compares the replication factor with the setting, and says so.
        with pytest.raises(SchemaMismatchError, match="replication factor 3 in Weaviate, "):
            ensure_schema(client, load_settings({"TERCUL_SYNC_REPLICATION_FACTOR": "1"}))
    finally:
        client.close()
