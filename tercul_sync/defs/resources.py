"""Dagster resources: one Weaviate client and one SQLAlchemy engine per step process, and the settings.

Both connections are ``ConfigurableResource``s that open in
``setup_for_execution`` and close in ``teardown_after_execution``: the
client is created inside the step's own process (gRPC channels do not
survive ``fork``) and exactly once per step. Every default and description
comes from ``engine.settings.Settings``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import dagster as dg
import weaviate
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine
from weaviate.exceptions import UnexpectedStatusCodeError

from tercul_sync.defs.executors import multiprocess_executor
from tercul_sync.engine import reading, weaviate_client
from tercul_sync.engine.objects import ObjectWrite
from tercul_sync.engine.replication import with_consistency
from tercul_sync.engine.schema_background import SchemaInBackground
from tercul_sync.engine.settings import Settings, env_name, load_settings


def _setting(name: str) -> Any:
    """A resource field whose default and description are the ``Settings`` field's."""
    info = Settings.model_fields[name]
    default = (
        info.default
        if info.default is None or isinstance(info.default, int | float | str)
        else str(info.default)
    )
    return Field(default=default, description=f"{info.description} ({env_name(name)})")


class WeaviateResource(dg.ConfigurableResource):
    """The Weaviate server tercul_sync writes to."""

    url: str = _setting("weaviate_url")
    grpc_port: int = _setting("weaviate_grpc_port")
    api_key: str | None = _setting("weaviate_api_key")
    timeout_seconds: float = _setting("weaviate_timeout_seconds")
    ca_bundle: str | None = _setting("weaviate_ca_bundle")
    consistency: str | None = Field(
        default=None,
        description="Consistency level of every request of a step (TERCUL_SYNC_WRITE_CONSISTENCY, or by "
        "TERCUL_SYNC_REPLICATION_FACTOR); unset: the server's default (QUORUM).",
    )

    _client: weaviate.WeaviateClient | None = PrivateAttr(default=None)
    _refused: str | None = PrivateAttr(default=None)
    _made_schema: SchemaInBackground | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        try:
            self._client = self._connect()
        except UnexpectedStatusCodeError as exc:
            if exc.status_code not in (401, 403):
                raise
            # Permanent: the step raises it as a Failure that Dagster does not retry (an error
            # raised here, during resource setup, would be retried by the step's RetryPolicy).
            hint = (
                "WEAVIATE_API_KEY is not accepted" if self.api_key else "the server requires WEAVIATE_API_KEY"
            )
            self._refused = f"Weaviate at {self.url} refused the connection ({exc.status_code}): {hint}"

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._made_schema is not None:
            self._made_schema.close()
            self._made_schema = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def ensure_schema(self, settings: Settings, collections: Collection[str] | None) -> list[str]:
        """The schema ``settings`` ask for, made once per resource on a thread of its own
        (``engine.schema_background``); waits until ``collections`` (None: all) are ready and
        returns what was changed for them. In one process the steps share the resource, so the
        first entity step writes while the collections after its own are still being made. After
        an error (raised in the step that waited) the next call starts again."""
        made = self._made_schema
        if made is None or made.settings != settings or made.failed:
            if made is not None:
                made.close()
            made = self._made_schema = SchemaInBackground(self.client, settings)
        return made.wait(collections)

    def _connect(self) -> weaviate.WeaviateClient:
        client = weaviate_client.connect(
            self.url, self.grpc_port, self.api_key, self.timeout_seconds, ca_bundle=self.ca_bundle
        )
        return client if self.consistency is None else with_consistency(client, self.consistency)

    @property
    def client(self) -> weaviate.WeaviateClient:
        if self._refused:
            raise dg.Failure(description=self._refused, allow_retries=False)
        if self._client is None:  # used outside a step, e.g. from a test or the CLI
            self._client = self._connect()
        return self._client

    def send_objects(
        self, client: weaviate.WeaviateClient, collection: str, items: list[ObjectWrite]
    ) -> dict[int, str]:
        """How a batch is sent; a subclass can put a fault in the way (the tests do)."""
        return weaviate_client.send_objects(client, collection, items)


class TerculDatabase(dg.ConfigurableResource):
    """Tercul's relational database, read through SQLAlchemy."""

    url: str = Field(description="SQLAlchemy URL (TERCUL_DATABASE_URL); the demo uses SQLite.")

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = reading.make_engine(self.url)
        if context.log is not None:  # always set during a run; typed optional
            context.log.info(f"reading Tercul from {reading.safe_url(self.url)}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = reading.make_engine(self.url)
        return self._engine


class SyncSettings(dg.ConfigurableResource):
    """How the batch processor writes, when a step fails, and where its reports go."""

    home: str = _setting("home")
    batch_size: int = _setting("batch_size")
    max_batch_bytes: int = _setting("max_batch_bytes")
    max_failure_rate: float = _setting("max_failure_rate")
    min_failures_to_fail: int = _setting("min_failures_to_fail")
    retry_attempts: int = _setting("retry_attempts")
    retry_initial_wait: float = _setting("retry_initial_wait")
    retry_max_wait: float = _setting("retry_max_wait")
    overlap_seconds: int = _setting("overlap_seconds")

    def settings(self) -> Settings:
        """The engine's settings: the environment's, with this resource's values on top."""
        return load_settings(**{name: getattr(self, name) for name in SyncSettings.model_fields})


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources a deployment configured by ``settings`` (the environment) uses.

    Secrets go through ``EnvVar``: Dagster resolves them in the step and never
    shows them in the UI or the run config.
    """
    database_url: str | dg.EnvVar = (
        dg.EnvVar(env_name("database_url")) if settings.database_url else settings.demo_database_url
    )
    api_key = dg.EnvVar(env_name("weaviate_api_key")) if settings.weaviate_api_key else None
    return {
        "weaviate": WeaviateResource(
            url=settings.weaviate_url,
            grpc_port=settings.weaviate_grpc_port,
            api_key=api_key,
            timeout_seconds=settings.weaviate_timeout_seconds,
            ca_bundle=str(settings.weaviate_ca_bundle) if settings.weaviate_ca_bundle else None,
            consistency=settings.consistency_level,
        ),
        "tercul_db": TerculDatabase(url=database_url),
        "sync_settings": SyncSettings(
            **{name: getattr(settings, name) for name in SyncSettings.model_fields if name != "home"},
            home=str(settings.home.resolve()),
        ),
    }


# The location's settings, read once when it loads.
SETTINGS = load_settings()

DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6390/0"  # the Redis scripts/redis-up starts


def _env_or(settings: Settings, name: str, default: str) -> str | dict[str, str]:
    """A secret setting as Dagster config: ``{"env": VAR}`` when it is set (resolved on use, never
    shown), else ``default``."""
    return {"env": env_name(name)} if getattr(settings, name) is not None else default


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery executor's config, which the workers must be started with too
    (``tercul-sync celery-config`` prints it as the YAML ``dagster-celery worker start -y`` takes).

    Tasks are acknowledged late, when their step has ended: a worker lost mid-step leaves its task
    unacknowledged, and Redis hands it to another worker once ``TERCUL_SYNC_CELERY_VISIBILITY_TIMEOUT``
    has passed. The steps are idempotent (objects are replaced whole), so running one again is safe.
    """
    broker = _env_or(settings, "celery_broker", DEFAULT_CELERY_BROKER)
    backend = _env_or(settings, "celery_backend", "") or broker
    timeout = settings.celery_visibility_timeout
    transport = {
        "visibility_timeout": timeout,
        # kombu looks for unacknowledged tasks every interval * throttle seconds
        "unacked_restore_interval": max(1, min(10, timeout // 10)),
        "unacked_restore_throttle": 1,
        # dagster-celery's defaults for reaching the broker
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }
    return {
        "broker": broker,
        "backend": backend,
        "config_source": {
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_transport_options": transport,
            "result_backend_transport_options": {"visibility_timeout": timeout},
        },
    }


def executor_from(settings: Settings) -> dg.ExecutorDefinition:
    """The executor ``TERCUL_SYNC_EXECUTOR`` names (docs/deployment.md).

    ``multiprocess``: steps in their own processes (one Weaviate client each, made in the step's
    process), forked from the run worker (``executors.py``), so each step starts in about 50 ms.
    ``in_process``: steps one after another in the run's process. ``celery``: steps
    as Celery tasks on ``dagster-celery`` workers. ``k8s``: one Kubernetes Job per step, with the
    image and environment of the run launcher that started the run.
    """
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(settings))
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": settings.max_concurrent_steps})
    return multiprocess_executor(settings.max_concurrent_steps)


@dg.definitions
def location_resources() -> dg.Definitions:
    """The resources, and the executor ``TERCUL_SYNC_EXECUTOR`` chooses."""
    return dg.Definitions(resources=resources_from(SETTINGS), executor=executor_from(SETTINGS))
