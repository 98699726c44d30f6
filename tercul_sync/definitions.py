"""The Dagster code location: everything under ``tercul_sync/defs``.

Load it with ``dagster dev -w workspace.yaml``, ``dagster job execute -m
tercul_sync.definitions -j full_sync`` or ``dg launch --job full_sync``.
``project_root`` is the package itself, so an installed wheel (no
pyproject.toml beside it) loads the same way as a checkout.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import tercul_sync.defs

defs = dg.load_defs(tercul_sync.defs, project_root=Path(__file__).resolve().parent)
