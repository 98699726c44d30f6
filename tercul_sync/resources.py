"""Dagster resources: one Weaviate client and one SQLAlchemy engine per step process.

Both are ``ConfigurableResource``s whose connection opens in
``setup_for_execution`` and closes in ``teardown_after_execution``: the
client is created inside the step's own process (the batcher and gRPC
channels do not survive ``fork``) and exactly once per step.
"""

from __future__ import annotations

import dagster as dg
import weaviate
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine
from weaviate.exceptions import UnexpectedStatusCodeError

from tercul_sync import source, weaviate_io
from tercul_sync.batch_writer import RetrySettings
from tercul_sync.sync import WriteSettings


class WeaviateResource(dg.ConfigurableResource):
    """The Weaviate server tercul_sync writes to."""

    url: str = Field(default="http://127.0.0.1:8080", description="HTTP address, e.g. http://127.0.0.1:8080 (WEAVIATE_URL).")
    grpc_port: int = Field(default=50051, description="gRPC port on the same host (WEAVIATE_GRPC_PORT).")
    api_key: str | None = Field(default=None, description="API key, when the server requires one (WEAVIATE_API_KEY).")
    timeout_seconds: float = Field(default=120.0, description="Timeout of one query or batch request.")

    _client: weaviate.WeaviateClient | None = PrivateAttr(default=None)
    _refused: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        try:
            self._client = weaviate_io.connect(self.url, self.grpc_port, self.api_key, self.timeout_seconds)
        except UnexpectedStatusCodeError as exc:
            if exc.status_code not in (401, 403):
                raise
            # Permanent: the step raises it as a Failure that Dagster does not retry (an error
            # raised here, during resource setup, would be retried by the step's RetryPolicy).
            hint = "WEAVIATE_API_KEY is not accepted" if self.api_key else "the server requires WEAVIATE_API_KEY"
            self._refused = f"Weaviate at {self.url} refused the connection ({exc.status_code}): {hint}"

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> weaviate.WeaviateClient:
        if self._refused:
            raise dg.Failure(description=self._refused, allow_retries=False)
        if self._client is None:  # used outside a step, e.g. from a test or the CLI
            self._client = weaviate_io.connect(self.url, self.grpc_port, self.api_key, self.timeout_seconds)
        return self._client


class TerculDatabase(dg.ConfigurableResource):
    """Tercul's relational database, read through SQLAlchemy."""

    url: str = Field(description="SQLAlchemy URL (TERCUL_DATABASE_URL); the demo uses SQLite.")

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = source.make_engine(self.url)
        context.log.info(f"reading Tercul from {source.safe_url(self.url)}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = source.make_engine(self.url)
        return self._engine


class SyncSettings(dg.ConfigurableResource):
    """How the batch processor writes and when a step fails."""

    batch_size: int = Field(default=500, description="Rows per read page and objects per write batch (TERCUL_SYNC_BATCH_SIZE).")
    max_batch_bytes: int = Field(
        default=16 * 1024 * 1024, description="Upper bound on one batch request's size (TERCUL_SYNC_MAX_BATCH_BYTES)."
    )
    max_failure_rate: float = Field(
        default=0.01,
        description=(
            "A step fails when more than this fraction of its objects failed; below it, it succeeds "
            "with a failing WARN check (TERCUL_SYNC_MAX_FAILURE_RATE)."
        ),
    )
    min_failures_to_fail: int = Field(
        default=10,
        description="Fewer failed objects than this never fail a step, whatever their share (TERCUL_SYNC_MIN_FAILURES_TO_FAIL).",
    )
    retry_attempts: int = Field(default=5, description="Attempts per batch for transient errors (TERCUL_SYNC_RETRY_ATTEMPTS).")
    overlap_seconds: int = Field(
        default=300,
        description="Seconds before its cursor the incremental sync re-reads, for late commits (TERCUL_SYNC_OVERLAP_SECONDS).",
    )
    report_dir: str = Field(description="Where each step writes its full failure report (JSON lines).")

    def write_settings(self, force: bool = False) -> WriteSettings:
        return WriteSettings(self.batch_size, self.max_batch_bytes, RetrySettings(attempts=self.retry_attempts), force)
