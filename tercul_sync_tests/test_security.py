"""Least privilege and secrets: a read-only database role, a Weaviate role limited to the Tercul
collections, TLS to Weaviate, and secrets that never show."""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from weaviate.classes.rbac import Permissions

from tercul_sync.defs.resources import WeaviateResource
from tercul_sync.devtools import cli, demo_data
from tercul_sync.devtools.weaviate_server import rbac_env
from tercul_sync.engine import delete_log, reading
from tercul_sync.engine import weaviate_client as wc
from tercul_sync.engine.registry import ENTITIES, PASSAGE_COLLECTION
from tercul_sync_tests.conftest import PG_HOST_PORT, start_weaviate
from tercul_sync_tests.helpers import assert_objects_match, run_sync
from tercul_sync_tests.tls_terminator import TlsTerminator, make_certificates

ADMIN_KEY = "admin-" + secrets.token_hex(16)
# Each collection's name and its versions behind an alias (Work_v1, ...).
TERCUL_COLLECTIONS = [f"{c}*" for c in [*(e.collection for e in ENTITIES), PASSAGE_COLLECTION]]


@pytest.fixture(scope="module")
def rbac_weaviate(tmp_path_factory):
    server = start_weaviate(tmp_path_factory.mktemp("weaviate-rbac"), extra_env=rbac_env(ADMIN_KEY))
    admin = wc.connect(server.url, server.grpc_port, ADMIN_KEY, timeout_s=60)
    try:
        yield server, admin
    finally:
        admin.close()
        server.stop()


def _user(admin, name: str, permissions) -> str:
    """A database user with one role of ``permissions``; returns its API key."""
    role = f"{name}_role"
    if admin.roles.exists(role):
        admin.roles.delete(role)
    if permissions:
        admin.roles.create(role_name=role, permissions=permissions)
    key = admin.users.db.create(user_id=name)
    if permissions:
        admin.users.db.assign_roles(user_id=name, role_names=[role])
    return key


def _tercul_role():
    """What tercul_sync needs: its collections (create, read, extend) and their objects (all of CRUD)."""
    return [
        Permissions.collections(
            collection=TERCUL_COLLECTIONS, create_collection=True, read_config=True, update_config=True
        ),
        Permissions.data(collection=TERCUL_COLLECTIONS, create=True, read=True, update=True, delete=True),
        Permissions.alias(
            alias=TERCUL_COLLECTIONS, collection=TERCUL_COLLECTIONS, create=True, read=True, update=True
        ),
    ]


@pytest.fixture
def readonly_role(postgres, pg_database):
    """A login role with SELECT on the Tercul tables of ``pg_database`` and nothing else."""
    role, password = f"tercul_ro_{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_hex(12)
    owner = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT")
    db = sa.engine.make_url(pg_database).database
    tables = ", ".join(reading.METADATA.tables)
    with owner.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{db}" TO {role}'))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    engine = reading.make_engine(pg_database)
    demo_data.generate(engine, 300, seed=5)
    engine.dispose()
    with owner.connect() as conn:
        conn.execute(sa.text(f"GRANT SELECT ON {tables} TO {role}"))
    url = f"postgresql+psycopg2://{role}:{password}@{PG_HOST_PORT}/{db}"
    try:
        yield url, role, password
    finally:
        with owner.connect() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
            conn.execute(sa.text(f"REVOKE USAGE ON SCHEMA public FROM {role}"))
            conn.execute(sa.text(f'REVOKE CONNECT ON DATABASE "{db}" FROM {role}'))
        owner.dispose()
        admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _failure(result) -> str:
    [failure] = result.get_step_failure_events()  # exactly one attempt: not retried
    return failure.step_failure_data.user_failure_data.description


@pytest.mark.services
def test_read_only_role_and_tercul_only_weaviate_user_sync_everything_and_leak_nothing(
    readonly_role, pg_database, rbac_weaviate, tmp_path, monkeypatch, caplog, capsys
):
    url, _role, password = readonly_role
    server, admin = rbac_weaviate
    key = _user(admin, "syncer", _tercul_role())
    monkeypatch.setenv("TEST_TERCUL_DATABASE_URL", url)
    monkeypatch.setenv("TEST_WEAVIATE_API_KEY", key)
    weaviate = WeaviateResource(
        url=server.url, grpc_port=server.grpc_port, api_key=dg.EnvVar("TEST_WEAVIATE_API_KEY")
    )
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    from tercul_sync_tests import helpers

    resources = helpers.resources(url, server, home=home, weaviate=weaviate)
    resources["tercul_db"] = type(resources["tercul_db"])(url=dg.EnvVar("TEST_TERCUL_DATABASE_URL"))
    engine = reading.make_engine(url)
    with sa.create_engine(pg_database).begin() as conn:
        # one row Weaviate cannot take as it is, so that a failure report is written
        conn.execute(sa.text("UPDATE works SET published_year = 2147483647 WHERE id = 1"))
        conn.execute(
            sa.text(
                "INSERT INTO tags (id, created_at, updated_at, name) "
                "VALUES (9007199254740993, now(), now(), 'x')"
            )
        )
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        helpers.build_assets(helpers.SHARDS),
        instance=instance,
        resources=resources,
        tags=helpers.all_shards_tags(helpers.SHARDS),
    )
    assert result.success
    assert_objects_match(engine, admin, tuple(e for e in ENTITIES if e.collection != "Tag"))

    # Secrets: not in the events (logs, metadata), the run config, the failure reports, the Python logs.
    report_texts = [p.read_text() for p in home.rglob("*.jsonl")]
    assert any("9007199254740993" in t for t in report_texts)  # the report exists and is read
    # every record of the run: Dagster events, metadata, and the log messages of steps and resources
    events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    run_config = str(result.dagster_run.run_config)
    captured = capsys.readouterr()
    for secret in (password, key, ADMIN_KEY):
        for where, text in {
            "events": events,
            "run config": run_config,
            "reports": "\n".join(report_texts),
            "logs": caplog.text,
            "output": captured.out + captured.err,
        }.items():
            assert secret not in text, f"a secret in the {where}"
    assert "***" in events  # the database URL is logged, masked

    # Exceptions: a wrong password and a refused key, and neither appears in what is raised.
    wrong = url.replace(password, password + "-wrong")
    with pytest.raises(Exception) as db_error:
        reading.check_source(reading.make_engine(wrong), ["works"])
    assert password not in str(db_error.value) and password not in repr(db_error.value)
    engine.dispose()


@pytest.mark.services
def test_a_missing_select_grant_names_the_table(
    readonly_role, pg_database, weaviate_server_proc, weaviate_client
):
    url, role, _ = readonly_role
    owner = sa.create_engine(pg_database)
    with owner.begin() as conn:
        conn.execute(sa.text(f"REVOKE SELECT ON books FROM {role}"))
    owner.dispose()
    result = run_sync(url, weaviate_server_proc, selection=["Book"], raise_on_error=False, retries=2)
    assert not result.success
    message = _failure(result)
    assert f"the database role {role} may not read table books: a SELECT grant is missing" in message
    assert not weaviate_client.collections.exists("Book")  # refused before anything was written


@pytest.mark.services
def test_the_delete_log_needs_no_grant_to_delete_and_a_grant_to_be_read(readonly_role, pg_database, capsys):
    """Installed by the tables' owner: a role that may delete works (and has no right on the log)
    still logs its deletes, through the trigger's SECURITY DEFINER function; the sync's read-only
    role does not use the log until ``--grant`` lets it read and prune it."""
    url, role, _ = readonly_role
    owner = reading.make_engine(pg_database)
    reader = reading.make_engine(url)
    delete_log.install(owner)
    assert delete_log.status(reader).startswith("installed, but this role may not read it")
    assert not delete_log.present(reader)
    with owner.begin() as conn:
        conn.execute(sa.text(f"GRANT DELETE ON works TO {role}"))
        work = conn.execute(sa.text("SELECT min(id) FROM works")).scalar_one()
    with reader.begin() as conn:
        conn.execute(sa.text("DELETE FROM works WHERE id = :i"), {"i": work})
    assert [i for i, _ in delete_log.removed_rows(owner, "works", [], None, timedelta(0))] == [work]

    assert cli.main(["delete-log", "--url", pg_database, "--grant", role]) == 0
    capsys.readouterr()
    assert delete_log.status(reader) == "installed"
    assert [i for i, _ in delete_log.removed_rows(reader, "works", [], None, timedelta(0))] == [work]
    assert delete_log.prune(reader, timedelta(0)) == 1
    owner.dispose()
    reader.dispose()


@pytest.mark.services
def test_a_key_without_the_rights_fails_at_once_naming_the_permission(rbac_weaviate, tmp_path):
    server, admin = rbac_weaviate
    url = f"sqlite:///{tmp_path / 'tags.db'}"
    demo_data.generate(reading.make_engine(url), 200, seed=3)
    # may read and create the collections, may not write objects
    key = _user(
        admin,
        "reader",
        [
            Permissions.collections(
                collection=TERCUL_COLLECTIONS, create_collection=True, read_config=True, update_config=True
            ),
            Permissions.data(collection=TERCUL_COLLECTIONS, read=True),
            Permissions.alias(
                alias=TERCUL_COLLECTIONS, collection=TERCUL_COLLECTIONS, create=True, read=True
            ),
        ],
    )
    weaviate = WeaviateResource(url=server.url, grpc_port=server.grpc_port, api_key=key)
    result = run_sync(url, server, selection=["Tag"], weaviate=weaviate, raise_on_error=False, retries=2)
    message = _failure(result)
    assert "user 'reader' lacks the permission" in message and "on collection Tag" in message, message
    assert "_data" in message and key not in message
    # no permission at all: refused at the schema, before any write
    nobody = _user(admin, "nobody", [])
    weaviate = WeaviateResource(url=server.url, grpc_port=server.grpc_port, api_key=nobody)
    result = run_sync(url, server, selection=["Tag"], weaviate=weaviate, raise_on_error=False, retries=2)
    message = _failure(result)
    assert "user 'nobody' lacks the permission" in message and nobody not in message, message


@pytest.mark.services
def test_tls_to_weaviate_with_a_ca_bundle(tmp_path, weaviate_server_proc, weaviate_client):
    certs = make_certificates(tmp_path / "tls")
    proxy = TlsTerminator(certs, [weaviate_server_proc.http_port, weaviate_server_proc.grpc_port]).start()
    try:
        https, grpc_port = f"https://localhost:{proxy.ports[0]}", proxy.ports[1]
        with pytest.raises(Exception, match=r"(?i)certificate"):  # the public roots do not know our CA
            wc.connect(https, grpc_port, None, timeout_s=10, connect_within_s=1)
        url = f"sqlite:///{tmp_path / 'tags.db'}"
        engine = reading.make_engine(url)
        demo_data.generate(engine, 200, seed=4)
        weaviate = WeaviateResource(url=https, grpc_port=grpc_port, ca_bundle=str(certs.ca))
        result = run_sync(url, weaviate_server_proc, selection=["Tag"], weaviate=weaviate)
        assert result.success
        tag = next(e for e in ENTITIES if e.collection == "Tag")
        assert_objects_match(engine, weaviate_client, (tag,))
    finally:
        proxy.stop()


@pytest.mark.unit
def test_access_denied_messages_name_the_permission():
    text = (
        "rbac: authorization, forbidden action: user 'syncer' has insufficient permissions to "
        "update_data [[Domain: data, Collection: Work, Tenant: *, Object: *]]"
    )
    message = wc.access_denied_message(text)
    assert message is not None
    assert "user 'syncer' lacks the permission update_data on collection Work" in message
    assert wc.access_denied_message("invalid integer property 'forbidden'") is None


@pytest.mark.unit
def test_a_ca_bundle_that_cannot_be_read_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="WEAVIATE_CA_BUNDLE"):
        wc.connect("https://localhost:1", 1, None, 1, connect_within_s=0.1, ca_bundle=tmp_path / "nope.pem")
