"""The code location as Dagster sees it: assets, jobs, the nightly schedule."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest
from tercul_sync.registry import ENTITIES
from tercul_sync.settings import SettingError, load_settings

from tercul_sync.definitions import ALL_SHARDS_TAGS, SHARD_KEYS, defs, nightly_full_sync


def test_one_asset_per_entity_type_plus_edges_in_one_group():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert set(specs) == {e.collection for e in ENTITIES} | {"edges"}
    assert {s.group_name for s in specs.values()} == {"tercul"}
    assert all("weaviate" in s.kinds for s in specs.values())


def test_jobs_cover_full_sync_and_each_entity_alone():
    full = defs.resolve_job_def("full_sync")
    assert {k.to_user_string() for k in full.asset_layer.executable_asset_keys} == {
        e.collection for e in ENTITIES
    } | {"edges"}
    work = defs.resolve_job_def("sync_work")
    assert {k.to_user_string() for k in work.asset_layer.executable_asset_keys} == {"Work"}
    assert defs.resolve_job_def("sync_edges")
    assert full.tags["dagster/asset_partition_range_start"] == SHARD_KEYS[0]
    assert full.tags["dagster/asset_partition_range_end"] == SHARD_KEYS[-1]


def test_nightly_schedule_requests_every_entity_and_every_partition():
    schedule = defs.resolve_schedule_def("nightly_full_sync")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.build_schedule_context(scheduled_execution_time=None) as context:
        data = schedule.evaluate_tick(context)
    [request] = data.run_requests
    assert schedule.job_name == "full_sync"
    assert request.tags["dagster/asset_partition_range_start"] == SHARD_KEYS[0]
    assert request.tags["dagster/asset_partition_range_end"] == SHARD_KEYS[-1]
    job = defs.resolve_job_def(schedule.job_name)
    partitioned = job.asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in partitioned} >= {e.collection for e in ENTITIES}
    assert nightly_full_sync is not None and {k: request.tags[k] for k in ALL_SHARDS_TAGS} == ALL_SHARDS_TAGS


def test_incremental_and_sweep_jobs_and_schedules():
    for job_name, schedule_name, mode in (
        ("incremental_sync", "incremental_sync_schedule", "incremental"),
        ("orphan_sweep", "orphan_sweep_schedule", "sweep"),
    ):
        schedule = defs.resolve_schedule_def(schedule_name)
        assert schedule.job_name == job_name and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        with dg.build_schedule_context() as context:
            [request] = schedule.evaluate_tick(context).run_requests
        assert request.tags["dagster/asset_partition_range_end"] == SHARD_KEYS[-1]
        assert request.tags["tercul_sync/mode"] == mode
        assert defs.resolve_job_def(job_name).tags["tercul_sync/mode"] == mode
    assert defs.resolve_schedule_def("incremental_sync_schedule").cron_schedule == "*/10 * * * *"


def test_schedules_and_settings_follow_the_environment():
    env = {
        **os.environ,
        "TERCUL_SYNC_BATCH_SIZE": "123",
        "TERCUL_SYNC_FULL_CRON": "15 3 * * *",
        "TERCUL_SYNC_INCREMENTAL_CRON": "*/5 * * * *",
        "TERCUL_SYNC_TIMEZONE": "Europe/Berlin",
    }
    code = (
        "from tercul_sync.definitions import defs\n"
        "for n in ('nightly_full_sync', 'incremental_sync_schedule'):\n"
        "    s = defs.resolve_schedule_def(n); print(n, s.cron_schedule, s.execution_timezone)\n"
        "from tercul_sync.definitions import resources\n"
        "print('batch_size', resources['sync_settings'].batch_size)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "nightly_full_sync 15 3 * * * Europe/Berlin" in out
    assert "incremental_sync_schedule */5 * * * * Europe/Berlin" in out
    assert "batch_size 123" in out  # the environment reaches the resource the writer reads


def test_a_bad_setting_names_the_variable():
    with pytest.raises(SettingError, match="TERCUL_SYNC_BATCH_SIZE must be a whole number, got 'lots'"):
        load_settings({"TERCUL_SYNC_BATCH_SIZE": "lots"})
    with pytest.raises(SettingError, match="TERCUL_SYNC_MAX_FAILURE_RATE must be between"):
        load_settings({"TERCUL_SYNC_MAX_FAILURE_RATE": "5"})
    assert load_settings({}).batch_size == 500
