"""Keep Python's cycle collector off the objects every process imports once and keeps.

Importing the code location (Dagster, weaviate-client, SQLAlchemy, gRPC) leaves a few hundred
thousand objects that live as long as the process. Python's cycle collector walks all of them in
every full collection: about 0.15 s each on this machine, a handful during a run, and again
several times while the interpreter shuts down (1.1 s from the last line of a ``dagster job
execute`` to its exit, measured). ``gc.freeze()`` moves the objects alive now into a generation
the collector never walks, which is what CPython offers for exactly this (see ``gc.freeze``); the
objects made later are collected as before.

Called once the code location is loaded (``tercul_sync/definitions.py``), so in every process
that runs tercul_sync: the CLI, the run and step processes, the daemon, the webserver's code
server, Celery workers. At exit it freezes again, so the shutdown skips its full collections: a
cycle of objects still alive then is not walked, its memory goes back with the process, and
anything that must be closed is closed before (resources are torn down, the Dagster instance
disposed of).
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def settle_imports() -> int:
    """Freeze the objects alive now; freeze again at exit. Returns how many objects are frozen."""
    global _registered
    gc.freeze()
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
    return gc.get_freeze_count()
