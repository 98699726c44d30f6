"""Up to 64 shards, the backfill policy setting, and the optional PostgreSQL index on ``(id % n, id)``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tercul_sync.defs.partitions import backfill_policy, shard_from_key, shard_keys
from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine.registry import entity
from tercul_sync.engine.settings import SettingError, load_settings
from tercul_sync.engine.shard_index import index_statements
from tercul_sync_tests.conftest import ROOT


@pytest.mark.unit
def test_up_to_64_shards_and_a_backfill_policy_from_the_settings():
    assert load_settings({"TERCUL_SYNC_SHARDS": "64"}).shards == 64
    with pytest.raises(SettingError, match="TERCUL_SYNC_SHARDS"):
        load_settings({"TERCUL_SYNC_SHARDS": "65"})
    keys = shard_keys(64)
    assert (keys[0], keys[-1], len(set(keys))) == ("shard-00", "shard-63", 64)
    assert shard_from_key("shard-63", 64) == reading.Shard(63, 64)
    assert backfill_policy("single_run").max_partitions_per_run is None
    assert backfill_policy("multi_run").max_partitions_per_run == 1


@pytest.mark.unit
def test_the_shard_clause_is_the_indexed_expression():
    """The modulus is a literal in the SQL (a bound parameter would not match the index)."""
    page = reading.select_live_page(entity("Work"), [reading.Shard(3, 16)], 0, 10)
    sql = str(page.compile(dialect=postgresql.dialect(paramstyle="named")))
    assert "works.id % 16 = " in sql
    [statement, *_] = index_statements(16)
    assert "((id % 16), id)" in statement and "CONCURRENTLY" in statement
    with pytest.raises(ValueError, match="between 2 and 64"):
        index_statements(65)


@pytest.mark.services
def test_tercul_sync_index_makes_a_shard_page_an_index_scan(pg_database):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 500, seed=3)
    cli = [sys.executable, "-m", "tercul_sync.devtools.cli", "index", "--shards", "16", "--url", pg_database]
    out = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "works_id_mod_16"' in out
    page = reading.select_live_page(entity("Work"), [reading.Shard(3, 16)], 0, 100)
    named = postgresql.dialect(paramstyle="named")
    sql = str(page.compile(dialect=named, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_indexscan = on"))
        plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {sql}")).scalars())
    assert "works_id_mod_16" in plan, plan
    subprocess.run([*cli, "--drop"], cwd=ROOT, check=True, capture_output=True)
