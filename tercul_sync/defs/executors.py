"""The multiprocess executor: Dagster's, starting each step's process by forking the run worker.

Dagster's ``multiprocess_executor`` offers two ways to start a step's process: ``spawn`` (a new
interpreter that imports the code location, about 1.5 s on two cores, for every step) and
``forkserver`` (one new interpreter per run imports it, then forks each step from it). Even the
forkserver costs a run its first 1.3 to 2 s: nothing can start until it has imported what the run
worker has already imported (dagster, weaviate-client, dagster-postgres, the Definitions), and on
a catalog of a thousand rows per type that is a fifth of the run (docs/deployment.md).

Forking the run worker itself costs nothing of the kind: the child has everything imported, and
starts its step in about 50 ms. Dagster leaves ``fork`` out of its config because forking a
process that runs other threads can deadlock the child: a lock that another thread held at the
fork stays held in the child, where that thread does not exist. So this executor forks only when
the run worker runs no thread but its main one and these helpers, which hold no lock of this
process while they wait (``FORK_SAFE_HELPERS``):

- ``termination-handler``: Dagster's thread that waits on the run's termination event, a
  ``multiprocessing.Event`` (semaphores shared between processes, nothing of this process held);
- ``QueueFeederThread``: the feeder of a ``multiprocessing.Queue`` (the run worker a code server
  starts sends its events back through one). The queue resets its own locks and buffer in every
  child multiprocessing starts, and the child's inherited finalizers are cleared.

A run worker of ``dagster job execute`` and ``dg launch`` runs only its main thread; one the daemon
has a code server start runs the two helpers (both checked by the tests). With any other thread
running, or a thread the kernel counts that Python does not know (one a C library started, such as
gRPC's), or where there is no ``/proc`` to count them, the executor falls back to Dagster's
forkserver, preloaded with the code location. (Python 3.12 and later warn on any fork of a process
with threads; the daemon's run workers would show that warning.) What the run worker holds that a
child must not touch is its storage's pooled PostgreSQL connection: ``storage.py`` drops it,
unclosed, in every forked child (SQLAlchemy's recipe for ``os.fork``); the child makes its own
Dagster instance anyway. Weaviate clients and database engines are made by each step's resources,
in the child.

Everything else is Dagster's ``MultiprocessExecutor``, with Dagster's config schema: a step process
that dies is seen by the run worker, marked failed and retried. The definition is configured
(``max_concurrent`` from ``TERCUL_SYNC_MAX_CONCURRENT_STEPS``, the rest at Dagster's defaults, retries
on), so a run's own config does not change it, as with Dagster's executor configured before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import dagster as dg
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.multiprocess import MultiprocessExecutor

PRELOAD = ["tercul_sync.definitions"]  # what the forkserver imports, when it is used
FORK, FORKSERVER = "fork", "forkserver"
FORK_SAFE_HELPERS = frozenset({"termination-handler", "QueueFeederThread"})  # see the module's doc


def start_method(other_threads: Sequence[str], os_threads: int | None) -> str:
    """How to start step processes from a run worker whose threads besides the main one have these
    names, and which runs ``os_threads`` threads in all as the kernel counts them (None: unknown).
    A thread the kernel counts and Python does not (one a C library started) may hold any lock."""
    known = os_threads is not None and os_threads == 1 + len(other_threads)
    return FORK if known and set(other_threads) <= FORK_SAFE_HELPERS else FORKSERVER


def _other_threads() -> list[str]:
    main = threading.main_thread()
    return [t.name for t in threading.enumerate() if t is not main]


def _os_threads() -> int | None:
    """This process's threads as Linux counts them (None where there is no ``/proc``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _create(init_context: dg.InitExecutorContext) -> MultiprocessExecutor:
    config = init_context.executor_config
    method = start_method(_other_threads(), _os_threads())
    return MultiprocessExecutor(
        retries=RetryMode.from_config(config["retries"]),  # type: ignore[arg-type]
        max_concurrent=config.get("max_concurrent"),  # type: ignore[arg-type]
        tag_concurrency_limits=config.get("tag_concurrency_limits"),  # type: ignore[arg-type]
        start_method=method,
        explicit_forkserver_preload=PRELOAD if method == FORKSERVER else None,
        step_dependency_config=StepDependencyConfig.from_config(config.get("step_dependency_config")),  # type: ignore[arg-type]
    )


def multiprocess_executor(max_concurrent: int) -> dg.ExecutorDefinition:
    """The executor, named ``multiprocess`` as Dagster's is, configured to run at most
    ``max_concurrent`` steps at once."""
    forking = dg.ExecutorDefinition(
        name="multiprocess",
        config_schema=dg.multiprocess_executor.config_schema.as_field(),
        requirements=dg.multiple_process_executor_requirements(),
        executor_creation_fn=_create,
        description="Dagster's multiprocess executor, forking each step's process from the run "
        "worker when the run worker runs no thread that may hold a lock (else from a forkserver).",
    )
    return forking.configured({"max_concurrent": max_concurrent})
