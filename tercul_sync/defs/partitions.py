"""Shards as Dagster partitions: ``shard-0`` .. ``shard-{n-1}``, a stable slice ``id % n`` of every table.

A handful of partitions per table whatever its size keeps the UI fast, and a
failed shard can be re-run alone and means what it meant.
"""

from __future__ import annotations

import dagster as dg

from tercul_sync.engine.reading import Shard

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def shard_keys(count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"shard-{i:0{width}d}" for i in range(count)]


def shard_from_key(key: str, count: int) -> Shard:
    try:
        index = int(key.removeprefix("shard-"))
    except ValueError:
        raise ValueError(f"partition key {key!r} is not a shard key like 'shard-0'") from None
    if not 0 <= index < count:
        raise ValueError(
            f"partition key {key!r} is outside the {count} shards configured by TERCUL_SYNC_SHARDS"
        )
    return Shard(index, count)


def shard_partitions(count: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(shard_keys(count))


def all_shards_tags(count: int) -> dict[str, str]:
    """Run tags that select every shard: with single-run backfill policies, one step per asset."""
    keys = shard_keys(count)
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


def backfill_policy(kind: str) -> dg.BackfillPolicy:
    """``TERCUL_SYNC_BACKFILL_POLICY``: ``single_run``, a range of shards is one run whose step walks
    them in turn (few runs, one step process); ``multi_run``, one run per shard (runs spread over
    run workers or Kubernetes pods, and a failed shard is retried alone)."""
    if kind == "multi_run":
        return dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
    return dg.BackfillPolicy.single_run()
