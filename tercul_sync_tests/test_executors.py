"""The multiprocess executor (defs/executors.py): step processes forked from the run worker when it
runs no thread that may hold a lock, from a forkserver otherwise. Real Dagster runs, no services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tercul_sync.defs.executors import FORK, FORKSERVER, start_method

pytestmark = pytest.mark.unit

# A job of one op recording its process and parent, run by execute_job from its own interpreter (the
# run worker), with or without a second thread running when the executor is made.
PROBE = """
import json, os, sys, threading, time

import dagster as dg

from tercul_sync.defs.executors import multiprocess_executor


@dg.op
def where() -> None:
    with open(os.environ["PROBE_OUT"], "w") as f:
        parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(errors="replace")
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "parent": parent}, f)


@dg.job(executor_def=multiprocess_executor(2))
def probe():
    where()


if __name__ == "__main__":
    if sys.argv[1] == "with-thread":
        threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
    with dg.instance_for_test() as instance:
        assert dg.execute_job(dg.reconstructable(probe), instance).success
    print(json.dumps({"run_worker": os.getpid()}))
"""


def _run_probe(tmp_path: Path, threads: str) -> tuple[int, dict[str, object]]:
    script, out = tmp_path / "probe.py", tmp_path / f"{threads}.json"
    script.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(script), threads],
        env={**os.environ, "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_worker = json.loads(done.stdout.strip().splitlines()[-1])["run_worker"]
    return run_worker, json.loads(out.read_text())


def test_only_the_main_thread_and_waiting_helpers_fork():
    assert start_method([], 1) == FORK
    assert start_method(["termination-handler", "QueueFeederThread"], 3) == FORK
    assert start_method(["QueueFeederThread", "Thread-1 (sleep)"], 3) == FORKSERVER
    assert start_method(["grpc-worker"], 2) == FORKSERVER


def test_a_thread_python_does_not_know_or_cannot_count_means_the_forkserver():
    assert start_method([], 2) == FORKSERVER  # a native thread (a C library's)
    assert start_method(["termination-handler"], 5) == FORKSERVER
    assert start_method([], None) == FORKSERVER  # no /proc to count them


def test_a_step_of_a_one_thread_run_worker_is_its_child(tmp_path):
    run_worker, step = _run_probe(tmp_path, "main-thread-only")
    assert step["pid"] != run_worker
    assert step["ppid"] == run_worker, (run_worker, step)


def test_a_step_of_a_run_worker_running_threads_comes_from_the_forkserver(tmp_path):
    run_worker, step = _run_probe(tmp_path, "with-thread")
    assert step["ppid"] != run_worker, (run_worker, step)
    assert "forkserver" in str(step["parent"]), step
