"""A real Dagster deployment of this code location: ``dagster-webserver`` and ``dagster-daemon``.

What ``scripts/ui`` runs, started from Python on a free loopback port with a
``DAGSTER_HOME`` of its own whose ``dagster.yaml`` is the repository's (runs,
events and schedule state in PostgreSQL, the queued run coordinator, the
pools), optionally with instance settings on top (``instance_overrides``, e.g.
a shorter ``dequeue_interval_seconds``). The services tests and
``benchmarks/bench_freshness.py`` use it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tercul_sync.devtools.weaviate_server import free_port

ROOT = Path(__file__).resolve().parents[2]  # the repository: workspace.yaml and dagster.yaml
BIN = Path(sys.executable).parent
# PyYAML (a dependency of dagster) has no stubs in the lock: used untyped, whether stubs come or not.
yaml: Any = importlib.import_module("yaml")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


@dataclass(frozen=True)
class PostgresStorage:
    """Where Dagster keeps its runs, events and schedule state (the ``DAGSTER_PG_*`` variables)."""

    db: str
    user: str = "tercul"
    password: str = "tercul"
    host: str = "127.0.0.1"
    port: int = 5432

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top, mappings merged key by key (an instance config and its overrides)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def write_instance_config(home: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """``home/dagster.yaml``: the repository's own, with ``overrides`` merged in."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(merged(config, overrides or {}), sort_keys=False))
    return path


@dataclass
class DagsterDeployment:
    """A running webserver and daemon; ``stop()`` ends both."""

    port: int
    home: Path
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL answer; errors raise."""
        answer = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=60
        ).json()
        if "errors" in answer:
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        data: dict[str, Any] = answer["data"]
        return data

    def is_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, name: str = "daemon", chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            # Each was started in a session of its own: what it started and left behind (the
            # webserver's code server, orphaned when the webserver is killed) goes with its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def deployment_env(storage: PostgresStorage, home: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any ``TERCUL_``, ``WEAVIATE_`` or ``DAGSTER_`` variable,
    then the instance's (``DAGSTER_HOME``, ``DAGSTER_PG_*``) and ``settings`` (tercul_sync's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERCUL_", "WEAVIATE_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), **storage.env())
    env.update(settings)
    return env


def start(
    home: Path,
    storage: PostgresStorage,
    settings: Mapping[str, str],
    instance_overrides: Mapping[str, Any] | None = None,
    ready_within_s: float = 180,
) -> DagsterDeployment:
    """Start ``dagster-webserver`` and ``dagster-daemon`` on ``workspace.yaml`` and wait for the webserver.

    ``settings``: tercul_sync's environment (``TERCUL_DATABASE_URL``, ``WEAVIATE_URL``, ...). Logs go
    to ``webserver.log`` and ``daemon.log`` in ``<home>_logs`` (not inside ``home``: Dagster moves a
    ``logs`` folder it finds there away, and deletes it).
    """
    write_instance_config(home, instance_overrides)
    logs = home.parent / f"{home.name}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = deployment_env(storage, home, settings)
    port = free_port()
    deployment = DagsterDeployment(port, home, env, logs)
    commands = {
        "webserver": ["dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": ["dagster-daemon", "run", "-w", "workspace.yaml"],
    }
    for name, cmd in commands.items():
        with (logs / f"{name}.log").open("w") as out:
            deployment.processes.append(
                subprocess.Popen(
                    [str(BIN / cmd[0]), *cmd[1:]],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a process group to reap on stop
                )
            )
    deadline = time.monotonic() + ready_within_s
    while not deployment.is_up():
        if time.monotonic() > deadline or any(p.poll() is not None for p in deployment.processes):
            deployment.stop()
            raise RuntimeError(f"dagster-webserver did not come up; see {logs}")
        time.sleep(1)
    return deployment
