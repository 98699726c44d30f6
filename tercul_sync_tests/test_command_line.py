"""The commands the README gives, run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from tercul_sync.devtools import demo_data
from tercul_sync.engine import reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import ENTITIES, entity, object_uuid
from tercul_sync_tests.conftest import PG_PASSWORD, ROOT, start_weaviate
from tercul_sync_tests.helpers import expected_objects

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent


def _env(tmp_path: Path, server, db_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERCUL_", "WEAVIATE_", "DAGSTER_"))}
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    env.update(
        WEAVIATE_URL=server.url,
        WEAVIATE_GRPC_PORT=str(server.grpc_port),
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        TERCUL_SYNC_HOME=str(tmp_path / "home"),
        TERCUL_SYNC_BATCH_SIZE="250",
        **extra,
    )
    if db_url:
        env["TERCUL_DATABASE_URL"] = db_url
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_dagster_job_execute_full_sync_with_no_arguments(
    tmp_path, pg_database, weaviate_server_proc, weaviate_client, monkeypatch
):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 2_000, seed=2)
    env = _env(tmp_path, weaviate_server_proc, pg_database)
    proc = _run(
        [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "full_sync"], env
    )
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    for e in ENTITIES:
        assert wc.count_objects(weaviate_client, e.collection) == len(expected_objects(engine, e)), (
            e.collection
        )
    assert f":{PG_PASSWORD}@" not in proc.stdout + proc.stderr  # the database password is never logged

    # The incremental job, as the README gives it, picks up a change and a delete.
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE works SET title = 'Changed by the backend', updated_at = now() WHERE id = 3")
        )
        conn.execute(sa.text("UPDATE works SET deleted_at = NULL, updated_at = now() WHERE id = 3"))
        conn.execute(sa.text("DELETE FROM works WHERE id = 4"))
    _run(
        [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "incremental_sync"],
        env,
    )
    works = weaviate_client.collections.use("Work")
    assert (
        works.query.fetch_object_by_id(object_uuid("Work", 3)).properties["title"] == "Changed by the backend"
    )
    assert works.query.fetch_object_by_id(object_uuid("Work", 4)) is None
    # It ran as an incremental sync (the job's mode tag), reading only what changed.
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        [latest] = instance.fetch_materializations(dg.AssetKey("Work"), limit=1).records
        md = {k: getattr(v, "value", v) for k, v in latest.asset_materialization.metadata.items()}
    assert md["mode"] == "incremental"
    assert md["rows_read"] < 10 and md["objects_written"] >= 1
    # The first sync into an empty Weaviate, parallel steps racing to create the schema, needed no retry.
    with dg.DagsterInstance.get() as instance:
        [first] = instance.get_runs(dg.RunsFilter(job_name="full_sync"), limit=1)
        retries = instance.get_records_for_run(
            first.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        checks = instance.get_records_for_run(
            first.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
        evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in checks.records]
        why = [
            str(r.event_log_entry.dagster_event.event_specific_data)[:2000]
            for r in instance.get_records_for_run(
                first.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
            ).records
        ] + [r.event_log_entry.user_message for r in retries]
    assert first.status == dg.DagsterRunStatus.SUCCESS and retries == [], why
    parity = {e.asset_key.to_user_string(): e.passed for e in evaluations if e.check_name == "parity"}
    # the full sync ends with exact parity, passages included
    assert parity == {**{e.collection: True for e in ENTITIES}, "passages": True}


def test_dg_launch_one_entity_type(tmp_path, pg_database, weaviate_server_proc, weaviate_client):
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 1_000, seed=4)
    _run([str(BIN / "dg"), "launch", "--job", "sync_tag"], _env(tmp_path, weaviate_server_proc, pg_database))
    assert wc.count_objects(weaviate_client, "Tag") == len(expected_objects(engine, entity("Tag")))
    assert not weaviate_client.collections.use("Work").aggregate.over_all(total_count=True).total_count


def test_demo_front_door_prints_a_summary(tmp_path, weaviate_server_proc, weaviate_client):
    env = _env(tmp_path, weaviate_server_proc)
    proc = _run([str(BIN / "tercul-sync"), "demo", "--rows", "150"], env)
    out = proc.stdout
    for e in ENTITIES:
        assert f"\n{e.collection:<12}" in out, out
    assert "run status: SUCCESS" in out
    # Passages are off unless asked for (the local model takes minutes over the demo's long bodies).
    assert "\npassages: off in the demo" in out and "\npassages " not in out, out
    first_work = next(line for line in out.splitlines() if line.startswith("Work "))
    assert int(first_work.split()[5].replace(",", "")) > 0  # texts embedded by the local model
    hits = out.split('search: tercul-sync search "winter river" --limit 5\n')[1].strip().splitlines()
    assert hits and hits[0].lstrip().startswith("1."), out
    again = _run([str(BIN / "tercul-sync"), "demo"], env).stdout
    work_line = next(line for line in again.splitlines() if line.startswith("Work "))
    assert work_line.split()[2] == "0"  # nothing rewritten on the second run
    assert work_line.split()[5] == "0"  # nothing embedded again
    engine = reading.make_engine(f"sqlite:///{tmp_path / 'home' / 'demo' / 'tercul.db'}")
    for e in ENTITIES:
        assert wc.count_objects(weaviate_client, e.collection) == len(expected_objects(engine, e))


def test_api_key_is_used_and_never_shown(tmp_path, pg_database):
    """A Weaviate that requires an API key: the sync authenticates, and the key is in no log or metadata."""
    key = "tercul-test-key-7f3a9c"
    server = start_weaviate(
        tmp_path / "weaviate-auth",
        extra_env={
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
            "AUTHENTICATION_APIKEY_ENABLED": "true",
            "AUTHENTICATION_APIKEY_ALLOWED_KEYS": key,
            "AUTHENTICATION_APIKEY_USERS": "tercul",
        },
    )
    try:
        engine = reading.make_engine(pg_database)
        demo_data.generate(engine, 600, seed=6)
        env = _env(tmp_path, server, pg_database)
        denied = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "sync_tag"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert denied.returncode != 0  # without the key the server refuses, and says what to do, at once
        assert "the server requires WEAVIATE_API_KEY" in denied.stdout + denied.stderr
        assert "STEP_UP_FOR_RETRY" not in denied.stdout + denied.stderr
        proc = _run(
            [str(BIN / "dagster"), "job", "execute", "-m", "tercul_sync.definitions", "-j", "sync_tag"],
            {**env, "WEAVIATE_API_KEY": key},
        )
        client = wc.connect(server.url, server.grpc_port, key, timeout_s=60)
        try:
            assert wc.count_objects(client, "Tag") == len(expected_objects(engine, entity("Tag")))
        finally:
            client.close()
        seen = [proc.stdout, proc.stderr]
        for path in (tmp_path / "dagster_home").rglob("*"):
            if path.is_file():
                seen.append(path.read_bytes().decode("utf-8", "replace"))
        assert not [s for s in seen if key in s], "the API key leaked into a log or Dagster's storage"
    finally:
        server.stop()
