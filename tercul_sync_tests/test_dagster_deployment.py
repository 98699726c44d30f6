"""The deployment harness the services tests and bench_freshness share: its instance config.

Starting the webserver and daemon is exercised by ``test_dagster_services.py``.
"""

from __future__ import annotations

import pytest
import yaml

from tercul_sync.devtools import dagster_deployment
from tercul_sync.devtools.dagster_deployment import PostgresStorage
from tercul_sync_tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_instance_is_the_repositorys_dagster_yaml_with_overrides_merged_in(tmp_path):
    repo = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    plain = yaml.safe_load(dagster_deployment.write_instance_config(tmp_path / "a").read_text())
    assert plain == repo

    faster = {"run_coordinator": {"config": {"dequeue_interval_seconds": 1}}}
    tuned = yaml.safe_load(dagster_deployment.write_instance_config(tmp_path / "b", faster).read_text())
    # The override lands inside the run coordinator; its class and everything else stay the repo's.
    assert tuned["run_coordinator"] == {**repo["run_coordinator"], "config": {"dequeue_interval_seconds": 1}}
    assert {k: v for k, v in tuned.items() if k != "run_coordinator"} == {
        k: v for k, v in repo.items() if k != "run_coordinator"
    }


def test_the_environment_carries_the_storage_and_drops_the_callers_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TERCUL_SYNC_SHARDS", "3")
    monkeypatch.setenv("WEAVIATE_URL", "http://elsewhere:8080")
    monkeypatch.setenv("DAGSTER_HOME", "/somewhere/else")
    env = dagster_deployment.deployment_env(
        PostgresStorage("dagster_x", port=5433), tmp_path, {"TERCUL_SYNC_SENSOR_INTERVAL": "5"}
    )
    assert env["DAGSTER_HOME"] == str(tmp_path)
    assert (env["DAGSTER_PG_DB"], env["DAGSTER_PG_PORT"], env["DAGSTER_PG_USERNAME"]) == (
        "dagster_x",
        "5433",
        "tercul",
    )
    assert env["TERCUL_SYNC_SENSOR_INTERVAL"] == "5"
    assert "TERCUL_SYNC_SHARDS" not in env and "WEAVIATE_URL" not in env
