"""The code location as Dagster sees it: assets, jobs, schedules, resources; and a snapshot of all of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tercul_sync.definitions import defs
from tercul_sync.defs.assets import CHECK_NAME, EDGES_ASSET, MODE_TAG, PASSAGES_ASSET, build_assets
from tercul_sync.defs.jobs import ALL_SHARDS_TAGS
from tercul_sync.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, shard_from_key, shard_keys
from tercul_sync.defs.resources import SETTINGS, SyncSettings, WeaviateResource, resources_from
from tercul_sync.engine.reading import Shard
from tercul_sync.engine.registry import ENTITIES
from tercul_sync.engine.settings import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SHARD_KEYS = shard_keys(SETTINGS.shards)
ALL_ASSETS = {e.collection for e in ENTITIES} | {EDGES_ASSET, PASSAGES_ASSET}


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment less every setting of ours and of Dagster's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERCUL_", "WEAVIATE_", "DAGSTER_"))}
    return {**env, "PYTHONWARNINGS": "ignore", **extra}


def _python(code: list[str] | str, env: dict[str, str]) -> str:
    args = ["-m", *code] if isinstance(code, list) else ["-c", code]
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_definitions_snapshot(snapshot):
    """Asset keys, groups, kinds, pools, partitions, checks, deps, jobs, schedules: a change shows in review.

    After an intended change: ``pytest tercul_sync_tests/test_definitions.py --snapshot-update``.
    """
    summary = json.loads(_python(["tercul_sync_tests.defs_summary"], _clean_env()).strip().splitlines()[-1])
    assert summary == snapshot


def test_one_asset_per_entity_type_plus_edges_in_one_group():
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert set(specs) == ALL_ASSETS
    assert {s.group_name for s in specs.values()} == {"tercul"}
    assert all({"weaviate", "sql"} <= set(s.kinds) for s in specs.values())
    for name in ALL_ASSETS:
        a = defs.resolve_assets_def(name)
        assert a.partitions_def is not None and a.partitions_def.get_partition_keys() == SHARD_KEYS
        assert CHECK_NAME in {k.name for k in a.check_keys}
        assert a.op.pool == f"tercul_sync/{name}"  # one pool per asset: two syncs of one type never overlap


def test_the_edges_come_after_every_entity_and_sources_after_their_targets():
    edges = defs.resolve_assets_def(EDGES_ASSET)
    assert {k.to_user_string() for k in edges.dependency_keys} == {e.collection for e in ENTITIES}
    work = defs.resolve_assets_def("Work")
    assert {k.to_user_string() for k in work.dependency_keys} == {"Author", "Tag", "Category"}
    # passages after their parents, and after the edges: the catalog whole first (docs/passages.md)
    passages = defs.resolve_assets_def(PASSAGES_ASSET)
    assert {k.to_user_string() for k in passages.dependency_keys} == {"Work", "Translation", EDGES_ASSET}


def test_jobs_cover_full_sync_and_each_entity_alone():
    full = defs.resolve_job_def("full_sync")
    assert {k.to_user_string() for k in full.asset_layer.executable_asset_keys} == ALL_ASSETS
    for e in ENTITIES:
        job = defs.resolve_job_def(f"sync_{e.collection.lower()}")
        assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {e.collection}
    edges = defs.resolve_job_def("sync_edges")
    assert {k.to_user_string() for k in edges.asset_layer.executable_asset_keys} == {EDGES_ASSET}
    assert (full.tags[RANGE_START_TAG], full.tags[RANGE_END_TAG]) == (SHARD_KEYS[0], SHARD_KEYS[-1])
    assert {RANGE_START_TAG: SHARD_KEYS[0], RANGE_END_TAG: SHARD_KEYS[-1]} == ALL_SHARDS_TAGS
    assert MODE_TAG not in full.tags  # full is the default; only the other modes are tagged


def test_nightly_schedule_requests_every_entity_and_every_partition():
    schedule = defs.resolve_schedule_def("nightly_full_sync")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "full_sync"
    with dg.build_schedule_context() as context:
        [request] = schedule.evaluate_tick(context).run_requests
    assert {k: request.tags[k] for k in ALL_SHARDS_TAGS} == ALL_SHARDS_TAGS
    assert request.tags["tercul_sync/trigger"] == "nightly_full_sync"


def test_incremental_and_sweep_jobs_and_schedules():
    for job_name, schedule_name, mode, cron in (
        ("incremental_sync", "incremental_sync_schedule", "incremental", "*/10 * * * *"),
        ("orphan_sweep", "orphan_sweep_schedule", "sweep", "30 * * * *"),
    ):
        schedule = defs.resolve_schedule_def(schedule_name)
        assert (schedule.job_name, schedule.cron_schedule) == (job_name, cron)
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        with dg.build_schedule_context() as context:
            [request] = schedule.evaluate_tick(context).run_requests
        assert request.tags[RANGE_END_TAG] == SHARD_KEYS[-1]
        assert request.tags[MODE_TAG] == mode
        job = defs.resolve_job_def(job_name)
        assert job.tags[MODE_TAG] == mode
        assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == ALL_ASSETS


def test_shard_keys_and_their_shards():
    assert shard_keys(3) == ["shard-0", "shard-1", "shard-2"]
    assert shard_keys(12)[:2] == ["shard-00", "shard-01"] and shard_keys(12)[-1] == "shard-11"  # they sort
    assert shard_from_key("shard-07", 12) == Shard(7, 12)
    with pytest.raises(
        ValueError, match="'shard-8' is outside the 8 shards configured by TERCUL_SYNC_SHARDS"
    ):
        shard_from_key("shard-8", 8)
    with pytest.raises(ValueError, match="'Work' is not a shard key"):
        shard_from_key("Work", 8)


def test_build_assets_follows_its_shard_count():
    assets = build_assets(3, dg.RetryPolicy(max_retries=0))
    assert {a.key.to_user_string() for a in assets} == ALL_ASSETS
    assert all(a.partitions_def.get_partition_keys() == shard_keys(3) for a in assets)
    assert all(a.op.retry_policy.max_retries == 0 for a in assets)


def test_resources_take_their_defaults_from_the_settings_model():
    for resource in (WeaviateResource, SyncSettings):
        for name, info in resource.model_fields.items():
            if name in Settings.model_fields and name != "home":
                assert info.default == Settings.model_fields[name].default, (resource.__name__, name)
    assert SyncSettings(home="/tmp/x", batch_size=7).settings().batch_size == 7


def test_secrets_reach_the_resources_only_as_env_vars():
    settings = load_settings(
        {"TERCUL_DATABASE_URL": "postgresql://u:hunter2@db/t", "WEAVIATE_API_KEY": "hunter2-key"}
    )
    res = resources_from(settings)
    assert res["tercul_db"].url == dg.EnvVar("TERCUL_DATABASE_URL")
    assert res["weaviate"].api_key == dg.EnvVar("WEAVIATE_API_KEY")
    assert "hunter2" not in repr(res)
    plain = resources_from(load_settings({}))
    assert plain["tercul_db"].url == load_settings({}).demo_database_url and plain["weaviate"].api_key is None


def test_schedules_and_settings_follow_the_environment():
    env = _clean_env(
        TERCUL_SYNC_BATCH_SIZE="123",
        TERCUL_SYNC_SHARDS="3",
        TERCUL_SYNC_FULL_CRON="15 3 * * *",
        TERCUL_SYNC_INCREMENTAL_CRON="*/5 * * * *",
        TERCUL_SYNC_TIMEZONE="Europe/Berlin",
    )
    code = (
        "from tercul_sync.definitions import defs\n"
        "for n in ('nightly_full_sync', 'incremental_sync_schedule'):\n"
        "    s = defs.resolve_schedule_def(n); print(n, s.cron_schedule, s.execution_timezone)\n"
        "print('batch_size', defs.resources['sync_settings'].batch_size)\n"
        "print('partitions', defs.resolve_assets_def('Work').partitions_def.get_partition_keys())\n"
        "print('tags', sorted(defs.resolve_job_def('full_sync').tags.items()))\n"
    )
    out = _python(code, env)
    assert "nightly_full_sync 15 3 * * * Europe/Berlin" in out
    assert "incremental_sync_schedule */5 * * * * Europe/Berlin" in out
    assert "batch_size 123" in out  # the environment reaches the resource the writer reads
    assert "partitions ['shard-0', 'shard-1', 'shard-2']" in out
    assert "('dagster/asset_partition_range_end', 'shard-2')" in out


def test_a_bad_setting_stops_the_code_location_with_the_variable_named():
    proc = subprocess.run(
        [sys.executable, "-c", "import tercul_sync.definitions"],
        env=_clean_env(TERCUL_SYNC_BATCH_SIZE="lots"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "SettingError: TERCUL_SYNC_BATCH_SIZE input should be a valid integer" in proc.stderr


def test_loading_the_code_location_takes_its_objects_out_of_the_collectors_walks():
    """Every process that loads the definitions freezes what it imported (``garbage_collection``):
    a full collection then walks only what the run made, and the shutdown's collections are skipped."""
    out = _python(
        "import gc, atexit, tercul_sync.definitions\n"
        "print(gc.get_freeze_count(), len(gc.get_objects()), atexit._ncallbacks())",
        _clean_env(),
    )
    frozen, walked, at_exit = map(int, out.split())
    assert frozen > 100_000, frozen  # Dagster, weaviate-client, SQLAlchemy, gRPC: hundreds of thousands
    assert walked < frozen // 10, (walked, frozen)
    assert at_exit >= 1


def test_loading_the_code_location_turns_on_dagsters_event_batches_unless_set():
    """Each step's materializations (one per shard) are then stored with one insert, not one each."""
    code = "import os, tercul_sync.definitions\nprint(os.environ['DAGSTER_EVENT_BATCH_SIZE'])"
    assert _python(code, _clean_env()).strip() == "100"
    assert _python(code, _clean_env(DAGSTER_EVENT_BATCH_SIZE="0")).strip() == "0"
