"""The code location as Dagster sees it: assets, jobs, the nightly schedule."""

from __future__ import annotations

import dagster as dg

from tercul_sync.definitions import ALL_SHARDS_TAGS, SHARD_KEYS, defs, nightly_full_sync
from tercul_sync.registry import ENTITIES


def test_one_asset_per_entity_type_plus_edges_in_one_group():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert set(specs) == {e.collection for e in ENTITIES} | {"edges"}
    assert {s.group_name for s in specs.values()} == {"tercul"}
    assert all("weaviate" in s.kinds for s in specs.values())


def test_jobs_cover_full_sync_and_each_entity_alone():
    full = defs.resolve_job_def("full_sync")
    assert {k.to_user_string() for k in full.asset_layer.executable_asset_keys} == {e.collection for e in ENTITIES} | {"edges"}
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
