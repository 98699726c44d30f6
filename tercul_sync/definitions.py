"""The Dagster code location: everything under ``tercul_sync/defs``.

Load it with ``dagster dev -w workspace.yaml``, ``dagster job execute -m
tercul_sync.definitions -j full_sync`` or ``dg launch --job full_sync``. The
project file Dagster looks for is ``tercul_sync/dg.toml``, inside the
package, so an installed wheel loads the same way as a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from tercul_sync.garbage_collection import settle_imports

EVENT_BATCH_SIZE = 100  # events at most per batch (a full_sync's 8 shards per asset are one batch)

# With this above zero Dagster stores an asset's materializations from one step (one per shard in a
# full_sync) with one insert and one update of the asset's record, instead of one of each per
# shard, as its hosted deployments do; open-source Dagster leaves it off. Set before any step runs,
# in every process that runs steps (each loads this module); an operator's own value wins.
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
settle_imports()  # what was imported lives as long as the process: the collector skips it
