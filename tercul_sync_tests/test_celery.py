"""``full_sync`` on the Celery executor: steps as tasks on two real ``dagster-celery`` workers.

Redis (Debian's redis-server, through scripts/redis-up) is the broker and result backend; the
Dagster instance keeps runs and events in PostgreSQL (the repo's dagster.yaml), which is how the
run process and the workers share them. One worker is killed (SIGKILL, with its pool) while it
holds a step: the task was acknowledged late, so Redis hands it to the other worker once the
visibility timeout has passed, and the sync still ends in exact parity.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.parity import check_parity
from tercul_sync.engine.registry import sync_order
from tercul_sync.engine.settings import load_settings
from tercul_sync_tests.conftest import PG_PASSWORD, PG_USER, ROOT, drop_database, new_database
from tercul_sync_tests.helpers import assert_references_match

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent
REDIS_PORT = int(os.environ.get("TERCUL_REDIS_PORT", "6390"))
REDIS_DB = 7  # the tests' own database on the project's Redis, emptied before each test
VISIBILITY_TIMEOUT = 15  # seconds before an unacknowledged task goes to another worker
RECEIVED = re.compile(r"Task execute_plan\[([0-9a-f-]+)\] received")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Start the project's Redis (scripts/redis-up) and return the URL of the tests' database."""
    subprocess.run([str(ROOT / "scripts" / "redis-up")], check=True)
    url = f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
    assert redis.Redis.from_url(url).ping()
    return url


@pytest.fixture
def dagster_db(postgres: str) -> Iterator[str]:
    """A new PostgreSQL database for Dagster's runs and events, shared by the run and the workers."""
    name = new_database(postgres, "dagster_c")
    try:
        yield name
    finally:
        drop_database(postgres, name)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill(proc: subprocess.Popen) -> None:
    """The worker and its pool processes at once, as when a machine is lost."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _received(log: Path) -> list[str]:
    return RECEIVED.findall(log.read_text(errors="replace")) if log.exists() else []


def test_full_sync_on_two_celery_workers_survives_losing_one(
    tmp_path, redis_url, dagster_db, pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 2_000, seed=13)
    redis.Redis.from_url(redis_url).flushdb()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # PostgreSQL storage
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERCUL_", "WEAVIATE_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_HOST="127.0.0.1",
        DAGSTER_PG_PORT=os.environ.get("TERCUL_PG_PORT", "5432"),
        DAGSTER_PG_DB=dagster_db,
        DAGSTER_PG_USERNAME=PG_USER,
        DAGSTER_PG_PASSWORD=PG_PASSWORD,
        TERCUL_DATABASE_URL=pg_database,
        TERCUL_SYNC_HOME=str(tmp_path / "home"),
        TERCUL_SYNC_VECTORIZER="none",
        TERCUL_SYNC_EXECUTOR="celery",
        TERCUL_SYNC_CELERY_BROKER=redis_url,
        TERCUL_SYNC_CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        WEAVIATE_URL=weaviate_server_proc.url,
        WEAVIATE_GRPC_PORT=str(weaviate_server_proc.grpc_port),
        PYTHONWARNINGS="ignore",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the workers run `celery` from here
    )
    # The workers' config is the executor's, printed by the module docs/deployment.md gives operators.
    config = tmp_path / "celery.yaml"
    config.write_text(
        subprocess.run(
            [sys.executable, "-m", "tercul_sync.defs.celery_worker"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert '"task_acks_late": true' in config.read_text()
    assert redis_url not in config.read_text(), "the broker URL is passed as {env: ...}, not written out"

    logs = {name: tmp_path / f"{name}.log" for name in ("w1", "w2", "run")}
    worker = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
    workers = {
        name: _spawn([*worker, "-n", name, "--", "--concurrency=1"], env, logs[name]) for name in ("w1", "w2")
    }
    run = None
    try:
        started = time.monotonic()
        run = _spawn(
            [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "full_sync"],
            env,
            logs["run"],
        )
        # Kill w1 as soon as it holds a task (its first one also imports the code location, so the
        # step is still running).
        deadline = time.monotonic() + 300
        while not _received(logs["w1"]):
            assert run.poll() is None, logs["run"].read_text()[-3000:]
            for name, proc in workers.items():
                assert proc.poll() is None, f"{name} exited:\n" + logs[name].read_text()[-3000:]
            assert time.monotonic() < deadline, "w1 never received a task:\n" + logs["w1"].read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        lost = _received(logs["w1"])
        _kill(workers["w1"])
        print(f"killed w1 {time.monotonic() - started:.1f} s into the run, holding tasks {lost}")

        assert run.wait(600) == 0, logs["run"].read_text()[-5000:]
        print(f"full_sync on Celery took {time.monotonic() - started:.1f} s")
        # Every task w1 received and did not finish was received again, and run, by w2.
        w1_done = re.findall(r"Task execute_plan\[([0-9a-f-]+)\] succeeded", logs["w1"].read_text())
        unfinished = [t for t in lost if t not in w1_done]
        assert unfinished, "w1 finished its task before it was killed: nothing was lost"
        w2_log = logs["w2"].read_text(errors="replace")
        for task in unfinished:
            assert f"Task execute_plan[{task}] received" in w2_log, w2_log[-3000:]
            assert f"Task execute_plan[{task}] succeeded" in w2_log, w2_log[-3000:]
    finally:
        for proc in [*workers.values(), *([run] if run else [])]:
            if proc.poll() is None:
                _kill(proc)

    shards = [reading.Shard(0, 1)]
    for e in sync_order():
        report = check_parity(engine, weaviate_client, e, shards, load_settings(env))
        assert report.exact, report.describe()
    assert_references_match(engine, weaviate_server_proc)
    # Every step ran on a Celery worker, none in the run's own process.
    dagster = sa.create_engine(
        f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{env['DAGSTER_PG_PORT']}/{dagster_db}"
    )
    with dagster.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM runs")).scalars().all()
        hosts = (
            conn.execute(sa.text("SELECT event FROM event_logs WHERE event LIKE '%in celery worker%'"))
            .scalars()
            .all()
        )
    dagster.dispose()
    assert status == ["SUCCESS"]
    assert hosts and all("w1@" in h or "w2@" in h for h in hosts)
