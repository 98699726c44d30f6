"""Configuration from the environment, with defaults and errors that name the variable.

Every knob is an environment variable so that the same code runs the demo,
CI and production; ``docs/configuration.md`` lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_HOME = PROJECT_DIR / ".tercul"


class SettingError(ValueError):
    """A setting has a value the project cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingError(f"{name} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None  # None: the embedded demo database under `home`
    weaviate_url: str
    weaviate_grpc_port: int
    batch_size: int
    max_batch_bytes: int
    shards: int
    max_failure_rate: float
    min_failures_to_fail: int
    retry_attempts: int
    overlap_seconds: int
    full_sync_cron: str
    incremental_cron: str
    sweep_cron: str
    schedule_timezone: str

    @property
    def demo_database_url(self) -> str:
        return f"sqlite:///{self.home / 'demo' / 'tercul.db'}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or self.demo_database_url

    @property
    def report_dir(self) -> Path:
        return self.home / "reports"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        home=Path(env.get("TERCUL_SYNC_HOME") or DEFAULT_HOME),
        database_url=env.get("TERCUL_DATABASE_URL") or None,
        weaviate_url=env.get("WEAVIATE_URL") or "http://127.0.0.1:8080",
        weaviate_grpc_port=_int(env, "WEAVIATE_GRPC_PORT", 50051),
        batch_size=_int(env, "TERCUL_SYNC_BATCH_SIZE", 500),
        max_batch_bytes=_int(env, "TERCUL_SYNC_MAX_BATCH_BYTES", 16 * 1024 * 1024, minimum=1024),
        shards=_int(env, "TERCUL_SYNC_SHARDS", 8),
        max_failure_rate=_float(env, "TERCUL_SYNC_MAX_FAILURE_RATE", 0.01, 0.0, 1.0),
        min_failures_to_fail=_int(env, "TERCUL_SYNC_MIN_FAILURES_TO_FAIL", 10),
        retry_attempts=_int(env, "TERCUL_SYNC_RETRY_ATTEMPTS", 5),
        overlap_seconds=_int(env, "TERCUL_SYNC_OVERLAP_SECONDS", 300, minimum=0),
        full_sync_cron=env.get("TERCUL_SYNC_FULL_CRON") or "0 2 * * *",
        incremental_cron=env.get("TERCUL_SYNC_INCREMENTAL_CRON") or "*/10 * * * *",
        sweep_cron=env.get("TERCUL_SYNC_SWEEP_CRON") or "30 * * * *",
        schedule_timezone=env.get("TERCUL_SYNC_TIMEZONE") or "UTC",
    )
