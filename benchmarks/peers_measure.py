"""Timing a command and the memory of its process tree, for bench_peers.py.

Every measured tool runs as a child process of the benchmark, so each has a
clean process of its own: a thread samples the tree (the child and all its
descendants) every 0.2 s with psutil and keeps the peak of the summed RSS and
of the largest single process. PSS (shared pages divided among the processes
that share them, from /proc/<pid>/smaps_rollup) is summed once a second: the
RSS sum counts a forkserver's shared pages once per child.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MB = 1024 * 1024


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process, or 0 when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class TreeSampler:
    """Peak memory of a process and its descendants (and, apart, of a server process)."""

    def __init__(self, root_pid: int, server_pid: int | None = None, every_s: float = 0.2) -> None:
        self.root_pid, self.server_pid, self.every_s = root_pid, server_pid, every_s
        self.peak_rss = self.peak_single = self.peak_pss = self.server_peak_rss = 0
        self.processes_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        pss_every = max(1, round(1.0 / self.every_s))
        while True:
            self.sample(with_pss=n % pss_every == 0)
            n += 1
            if self._stop.wait(self.every_s):
                self.sample(with_pss=True)
                return

    def sample(self, with_pss: bool = False) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        total = single = pss = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            self.processes_seen.add(p.pid)
            total += rss
            single = max(single, rss)
            if with_pss:
                pss += pss_bytes(p.pid)
        self.peak_rss = max(self.peak_rss, total)
        self.peak_single = max(self.peak_single, single)
        self.peak_pss = max(self.peak_pss, pss)
        if self.server_pid is not None:
            with contextlib.suppress(psutil.Error):
                server = psutil.Process(self.server_pid).memory_info().rss
                self.server_peak_rss = max(self.server_peak_rss, server)


def cpu_by_process() -> dict[tuple[int, float], tuple[str, float]]:
    """CPU seconds so far of every process: ``{(pid, create time): (user name, seconds)}``."""
    out = {}
    for p in psutil.process_iter(["username", "create_time", "cpu_times"]):
        times = p.info["cpu_times"]
        if times is not None:
            out[(p.pid, p.info["create_time"])] = (p.info["username"] or "", times.user + times.system)
    return out


def other_cpu_seconds(
    before: dict[tuple[int, float], tuple[str, float]],
    after: dict[tuple[int, float], tuple[str, float]],
    ours: set[int],
) -> float:
    """CPU seconds spent between two snapshots by processes that are not part of the measurement.

    Ours: the measured tree, the Weaviate server, this process, and PostgreSQL's
    processes (they serve the measured tool). Anything else competed for the cores.
    """
    total = 0.0
    for key, (user, seconds) in after.items():
        if key[0] in ours or user == "postgres":
            continue
        total += seconds - before.get(key, (user, 0.0))[1]
    return total


@dataclass
class Measured:
    """One timed child process: wall seconds, memory peaks (bytes), its output and its JSON result."""

    command: list[str]
    seconds: float
    returncode: int
    peak_rss: int
    peak_single: int
    peak_pss: int
    server_peak_rss: int
    processes: int
    other_cpu_s: float  # CPU seconds other processes used meanwhile (a noisy neighbour shows here)
    started_at: float  # epoch seconds, to line up with Dagster's event timestamps
    log: Path
    result: dict[str, Any] = field(default_factory=dict)  # the child's last JSON line, if any

    def check(self) -> Measured:
        if self.returncode != 0:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"{' '.join(self.command)} exited with {self.returncode}; log {self.log}:\n{tail}"
            )
        return self


RESULT_PREFIX = "BENCH-RESULT "


def run_measured(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
    server_pid: int | None = None,
    timeout_s: float = 3600,
) -> Measured:
    """Run ``command`` to its end, timing it and sampling its process tree's memory.

    Its stdout and stderr go to ``log``; a line ``BENCH-RESULT {json}`` in its
    output is its own report (the phase scripts print one).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = cpu_by_process()
    with open(log, "wb") as out:
        started_at = time.time()
        t = time.perf_counter()
        proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with TreeSampler(proc.pid, server_pid) as sampler:
            try:
                rc = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise
        seconds = time.perf_counter() - t
    ours = {*sampler.processes_seen, os.getpid(), *([server_pid] if server_pid else [])}
    other = other_cpu_seconds(cpu_before, cpu_by_process(), ours)
    result: dict[str, Any] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    return Measured(
        list(command),
        seconds,
        rc,
        sampler.peak_rss,
        sampler.peak_single,
        sampler.peak_pss,
        sampler.server_peak_rss,
        len(sampler.processes_seen),
        other,
        started_at,
        log,
        result,
    )


def self_peak_rss() -> int:
    """This process's RSS high-water mark in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: ``5`` into clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def emit(result: Mapping[str, Any]) -> None:
    """A phase script's report to the benchmark: one line on stdout."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def code_snapshot(rev: str, root: Path) -> tuple[str, Path]:
    """``(short sha, folder)``: tercul_sync and ``dagster.yaml`` as committed at ``rev``, extracted
    once with ``git archive`` into ``.tercul/bench-code/<sha>/``. Put the folder first on a child's
    ``PYTHONPATH`` to run that commit; a work tree edited meanwhile changes nothing it measures."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = root / ".tercul" / "bench-code" / sha
    if not (target / "dagster.yaml").exists():  # the instance config travels with the package
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha, "tercul_sync", "dagster.yaml"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return sha, target
