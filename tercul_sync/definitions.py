"""The Dagster code location: everything under ``tercul_sync/defs``.

Load it with ``dagster dev -w workspace.yaml``, ``dagster job execute -m
tercul_sync.definitions -j full_sync`` or ``dg launch --job full_sync``. The
project file Dagster looks for is ``tercul_sync/dg.toml``, inside the
package, so an installed wheel loads the same way as a checkout.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tercul_sync.garbage_collection import settle_imports

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
settle_imports()  # what was imported lives as long as the process: the collector skips it
