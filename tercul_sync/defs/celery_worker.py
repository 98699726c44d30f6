"""The config a ``dagster-celery`` worker is started with, as YAML: the same as the Celery executor's.

    python -m tercul_sync.defs.celery_worker > celery.yaml
    dagster-celery worker start -A dagster_celery.app -y celery.yaml

The broker and backend stay ``{env: VAR}`` references when they are set (their URLs may hold a
password); the worker resolves them from its own environment. See docs/deployment.md.
"""

from __future__ import annotations

import json

from tercul_sync.defs.resources import celery_config
from tercul_sync.engine.settings import load_settings


def worker_yaml() -> str:
    """The file ``dagster-celery worker start -y`` reads: the executor config under ``execution.config``,
    written as JSON, which is YAML too."""
    return json.dumps({"execution": {"config": celery_config(load_settings())}}, indent=2) + "\n"


if __name__ == "__main__":
    print(worker_yaml(), end="")
