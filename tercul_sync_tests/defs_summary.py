"""The code location's shape as plain data, for the Definitions snapshot (``test_definitions.py``).

Run as ``python -m tercul_sync_tests.defs_summary``: it prints the summary as
JSON. The test runs it in a clean environment (no ``TERCUL_*``, ``WEAVIATE_*``
or ``DAGSTER_*`` variables), so the snapshot shows the defaults.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg


def _asset(a: dg.AssetsDefinition, key: dg.AssetKey) -> dict[str, Any]:
    spec = a.specs_by_key[key]
    config = a.op.config_schema.config_type
    policy = a.op.retry_policy
    return {
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "pool": a.op.pool,
        "partition_keys": a.partitions_def.get_partition_keys() if a.partitions_def else None,
        "backfill_policy": str(a.backfill_policy),
        "retry_policy": None
        if policy is None
        else {
            "max_retries": policy.max_retries,
            "delay": policy.delay,
            "backoff": policy.backoff.value if policy.backoff else None,
            "jitter": policy.jitter.value if policy.jitter else None,
        },
        "checks": sorted(k.name for k in a.check_keys),
        "deps": {
            d.asset_key.to_user_string(): type(d.partition_mapping).__name__
            for d in sorted(spec.deps, key=lambda d: d.asset_key.to_user_string())
        },
        "config": {
            name: field.default_value if field.default_provided else None
            for name, field in sorted(config.fields.items())
        }
        if config is not None and hasattr(config, "fields")
        else {},
        "resources": sorted(a.required_resource_keys),
    }


def summary(defs: dg.Definitions) -> dict[str, Any]:
    assets = {}
    for key in sorted(defs.resolve_all_asset_keys(), key=lambda k: k.to_user_string()):
        assets[key.to_user_string()] = _asset(defs.resolve_assets_def(key), key)
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        jobs[job.name] = {
            "tags": dict(sorted(job.tags.items())),
            "assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
        }
    schedules = {}
    for name in sorted(s.name for s in defs.schedules or []):
        s = defs.resolve_schedule_def(name)
        schedules[name] = {
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "default_status": s.default_status.value,
            "job": s.job_name,
        }
    sensors = {}
    for name in sorted(s.name for s in defs.sensors or []):
        sensor = defs.resolve_sensor_def(name)
        sensors[name] = {
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "default_status": sensor.default_status.value,
            "job": sensor.job_name,
        }
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "resources": sorted(defs.resources or {}),
        "executor": defs.executor.name if isinstance(defs.executor, dg.ExecutorDefinition) else None,
    }


if __name__ == "__main__":
    from tercul_sync.definitions import defs

    print(json.dumps(summary(defs), sort_keys=True))
