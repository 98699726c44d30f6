"""Bad input: every row lands in Weaviate or is in the failure report with its id and reason, and the
rest of its batch lands. Plus a source schema that does not match the registry.

The corpus runs against its own Weaviate whose gRPC maximum message size is
lowered to 2 MB (``GRPC_MAX_MESSAGE_SIZE``; the default is 104,858,000 bytes,
checked below on the session's server), so a body over the limit costs a few
MB of memory instead of a hundred.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tercul_sync.engine import reading
from tercul_sync.engine.objects import row_problem
from tercul_sync.engine.registry import entity, object_uuid
from tercul_sync_tests.conftest import start_weaviate
from tercul_sync_tests.helpers import (
    assert_references_match,
    expected_objects,
    metadata,
    run_sync,
    stored_objects,
)

GRPC_LIMIT = 2_000_000
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OFFSETS = [timedelta(hours=h) for h in (-12, -5, 0, 5, 14)] + [timedelta(hours=5, minutes=45)]


@pytest.fixture(scope="module")
def small_grpc_weaviate(tmp_path_factory):
    server = start_weaviate(
        tmp_path_factory.mktemp("weaviate-small-grpc"), extra_env={"GRPC_MAX_MESSAGE_SIZE": str(GRPC_LIMIT)}
    )
    try:
        yield server
    finally:
        server.stop()


def _row(**values):
    return {"created_at": T0, "updated_at": T0, "deleted_at": None, **values}


def _insert(engine: sa.Engine, table: str, rows: list[dict]) -> None:
    t = reading.METADATA.tables[table]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{c.name: r.get(c.name) for c in t.columns} for r in rows])


def _edge(i: int, st: str, sid: int, rel: str, tt: str, tid: int) -> dict:
    return _row(id=i, source_table=st, source_id=sid, relation=rel, target_table=tt, target_id=tid)


def _failures(result, asset: str) -> dict:
    md = metadata(result, asset)
    if "failure_report" not in md:
        return {}
    lines = [json.loads(x) for x in Path(md["failure_report"]).read_text().splitlines()]
    return {x["id"]: x["error"] for x in lines}


@pytest.mark.services
def test_the_default_grpc_limit_is_what_the_docs_say(weaviate_server_proc):
    meta = httpx.get(f"{weaviate_server_proc.url}/v1/meta", timeout=10).json()
    assert meta["grpcMaxMessageSize"] == 104_858_000


@pytest.mark.services
def test_bad_rows_land_or_are_reported_and_their_batches_land(tmp_path, small_grpc_weaviate):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    engine = reading.make_engine(url)
    reading.METADATA.create_all(engine)
    works = [
        _row(id=1, title="Moby Dick", original_language="en", body="Call me Ishmael."),
        _row(id=2, title="nul\x00byte", original_language="en", body="a\x00b", summary="\x00"),
        _row(id=4, title="", original_language="", summary="", body=""),
        _row(id=5, title="   \t\n", original_language=" ", summary="  ", body="\n\n   \n"),
        _row(id=6, title="too big", original_language="en", body="x" * 2_500_000),  # over the limit
        *(_row(id=i, title=f"big {i}", original_language="en", body="y" * 700_000) for i in (7, 8, 9)),
        _row(id=10, title="past 2^53", original_language="en", published_year=2**53 + 1),
        _row(id=11, title="int32 low", original_language="en", published_year=-(2**31)),
        _row(id=12, title="2^53 exactly", original_language="en", published_year=2**53),
        _row(id=13, title="int64 max", original_language="en", published_year=2**63 - 1),
        _row(id=14, title="int64 min", original_language="en", published_year=-(2**63)),
        _row(id=15, title="fine", original_language="fr", is_public_domain=True, published_year=0),
    ]
    _insert(engine, "works", works)
    with engine.begin() as conn:  # a lone surrogate, as another program's bytes (CESU-8 of U+D800)
        conn.execute(
            sa.text(
                "INSERT INTO works (id, created_at, updated_at, title, original_language) "
                "VALUES (3, :t, :t, CAST(X'61EDA08062' AS TEXT), 'en')"
            ),
            {"t": T0},
        )
    # Timestamps at the ends of the calendar, at every offset: created_at year 1, published_at 9999.
    authors = [
        _row(
            id=i + 1,
            name=f"a{i}",
            created_at=datetime(1, 1, 1, tzinfo=timezone(off)),
            updated_at=T0,
        )
        for i, off in enumerate(OFFSETS)
    ]
    _insert(engine, "authors", authors)
    translations = [
        _row(
            id=i + 1,
            work_id=1,
            language="de",
            published_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(off)),
        )
        for i, off in enumerate(OFFSETS)
    ]
    _insert(engine, "translations", translations)
    _insert(engine, "categories", [_row(id=1, name="self"), _row(id=2, name="child", parent_id=1)])
    _insert(engine, "tags", [_row(id=1, name="t1"), _row(id=2, name=" ")])
    _insert(
        engine,
        "edges",
        [
            _edge(1, "works", 1, "authors", "authors", 1),
            _edge(2, "works", 1, "authors", "authors", 1),  # duplicate
            _edge(3, "works", 1, "inspired", "authors", 2),  # unknown relation
            _edge(4, "categories", 1, "parent", "categories", 1),  # self-reference
            _edge(5, "works", 1, "tags", "tags", 99),  # unknown target row
            _edge(6, "films", 1, "authors", "authors", 1),  # unknown source table
            _edge(7, "works", 12, "tags", "tags", 1),
            _edge(8, "works", 12, "tags", "tags", 1),  # duplicate again, another source
            _edge(9, "categories", 2, "parent", "categories", 1),
            _edge(10, "works", 2, "authors", "authors", 3),
        ],
    )

    result = run_sync(url, small_grpc_weaviate, home=tmp_path / "home", batch_size=50, raise_on_error=False)
    assert result.success, [e.message for e in result.get_step_failure_events()]

    failed = _failures(result, "Work")
    assert set(failed) == {3, 6, 10, 13, 14}, failed
    assert "lone surrogate" in failed[3] and "U+D800" in failed[3]
    assert "larger than Weaviate's gRPC maximum message size" in failed[6] and str(GRPC_LIMIT) in failed[6]
    assert all("2^53" in failed[i] for i in (10, 13, 14))

    from tercul_sync.engine import weaviate_client as wc

    client = wc.connect(small_grpc_weaviate.url, small_grpc_weaviate.grpc_port, None, timeout_s=60)
    try:
        for name in ("Work", "Author", "Translation", "Category", "Tag"):
            e = entity(name)
            expected = {
                object_uuid(name, i): p
                for i, p in expected_objects(engine, e).items()
                if not (name == "Work" and i in failed)
            }
            stored = _stored_one_by_one(client, name)
            assert set(stored) == set(expected), name  # every other row of the batches landed
            for u, props in expected.items():
                assert stored[u] == props, (name, props.get("source_id"))
        # the big bodies that fit one by one were split out of a batch over the limit, not refused
        assert metadata(result, "Work")["objects_written"] == len(works) + 1 - len(failed)
        refs = assert_references_match(engine, small_grpc_weaviate)
        assert refs[("Category", "parent", 1)] == {1}  # the self-reference, once
        assert refs[("Work", "authors", 1)] == {1}  # the duplicate edge, once
        # passages: the surrogate row is reported with its parent key; the big body's passages landed
        passage_failures = _failures(result, "passages")
        assert set(passage_failures) == {f"Work:{i}" for i in failed}  # once per parent, not per passage
        assert "lone surrogate" in passage_failures["Work:3"] and "no object" in passage_failures["Work:6"]
    finally:
        client.close()


@pytest.mark.services
def test_timestamps_postgres_cannot_hand_to_python_are_reported(
    pg_database, weaviate_server_proc, weaviate_client, tmp_path
):
    # weaviate_client empties the server: objects another test left (a Translation 11) would be counted
    engine = reading.make_engine(pg_database)
    reading.METADATA.create_all(engine)
    _insert(engine, "works", [_row(id=1, title="w", original_language="en")])
    rows = []
    for i, off in enumerate(OFFSETS):  # year 1 and 9999 at every offset, as timestamptz literals
        sign = "-" if off < timedelta(0) else "+"
        hours, minutes = divmod(abs(int(off.total_seconds())) // 60, 60)
        rows.append((2 * i + 1, f"0001-01-01 00:00:00{sign}{hours:02d}:{minutes:02d}"))
        rows.append((2 * i + 2, f"9999-12-31 23:59:59.999999{sign}{hours:02d}:{minutes:02d}"))
    with engine.begin() as conn:
        for i, literal in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO translations (id, created_at, updated_at, work_id, language, published_at) "
                    "VALUES (:i, :t, :t, 1, 'de', CAST(:p AS timestamptz))"
                ),
                {"i": i, "t": T0, "p": literal},
            )
        # PostgreSQL's text cannot hold NUL at all: such rows never reach the sync
        with pytest.raises(ValueError, match="NUL"):
            conn.execute(sa.text("SELECT CAST(:s AS text)"), {"s": "a\x00b"})
    result = run_sync(
        pg_database, weaviate_server_proc, selection=["Work", "Translation"], home=tmp_path / "home"
    )
    failed = _failures(result, "Translation")
    # Out of Python's range once in UTC: year 1 east of Greenwich, 9999-12-31 west of it.
    out = {i for i, lit in rows if (lit.startswith("0001") and "+" in lit[-6:] and lit[-5:] != "00:00")}
    out |= {i for i, lit in rows if lit.startswith("9999") and lit[-6] == "-"}
    assert set(failed) == out, failed
    assert all("not a timestamp Python can represent" in m for m in failed.values())
    client_ids = {p["source_id"] for p in stored_objects_of(weaviate_server_proc, "Translation").values()}
    assert client_ids == {i for i, _ in rows} - out


def _stored_one_by_one(client, collection: str) -> dict:
    """Like ``helpers.stored_objects``, one object per response (three 700 KB bodies exceed 2 MB)."""
    out = {}
    for obj in client.collections.use(collection).iterator(cache_size=1):
        props = {k: v for k, v in obj.properties.items() if v is not None and not k.startswith("sync_")}
        out[str(obj.uuid)] = props
    return out


def stored_objects_of(server, collection: str) -> dict:
    from tercul_sync.engine import weaviate_client as wc

    client = wc.connect(server.url, server.grpc_port, None, timeout_s=60)
    try:
        return stored_objects(client, entity(collection))
    finally:
        client.close()


@pytest.mark.unit
def test_row_problem_names_the_column_and_reason():
    work = entity("Work")
    base = {c.name: None for c in work.property_columns} | {"id": 1, "title": "t", "original_language": "en"}
    assert row_problem(work, base) is None
    assert row_problem(work, base | {"title": "", "summary": "  \x00 "}) is None
    assert "column title" in (row_problem(work, base | {"title": "a\ud800"}) or "")
    assert "column published_year" in (row_problem(work, base | {"published_year": 2**53 + 1}) or "")
    assert row_problem(work, base | {"published_year": -(2**53)}) is None
    assert "column id" in (row_problem(work, base | {"id": 2**60}) or "")
    assert "column created_at" in (row_problem(work, base | {"created_at": reading.OutOfRange("x")}) or "")


# --- a source schema that does not match the registry -------------------------------------


def _assert_refused_before_writing(result, client, *needles: str) -> None:
    assert not result.success
    [failure] = result.get_step_failure_events()  # one attempt: not retried
    description = failure.step_failure_data.user_failure_data.description
    for needle in needles:
        assert needle in description, description
    assert not client.collections.exists("Work")  # nothing written, not even the schema


@pytest.mark.services
def test_missing_and_mistyped_columns_are_named_before_anything_is_written_sqlite(
    tmp_path, weaviate_server_proc, weaviate_client
):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    engine = reading.make_engine(url)
    reading.METADATA.create_all(engine)
    _insert(engine, "works", [_row(id=1, title="w", original_language="en")])
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE works DROP COLUMN summary"))
        conn.execute(sa.text("ALTER TABLE works DROP COLUMN published_year"))
        conn.execute(sa.text("ALTER TABLE works ADD COLUMN published_year TEXT"))
    result = run_sync(url, weaviate_server_proc, selection=["Work"], raise_on_error=False, retries=2)
    _assert_refused_before_writing(
        result,
        weaviate_client,
        "table works has no column summary",
        "table works, column published_year is TEXT in the database, the registry needs an integer",
    )


@pytest.mark.services
def test_missing_and_mistyped_columns_are_named_before_anything_is_written_postgres(
    pg_database, weaviate_server_proc, weaviate_client
):
    engine = reading.make_engine(pg_database)
    reading.METADATA.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE authors DROP COLUMN biography"))
        conn.execute(sa.text("ALTER TABLE works ALTER COLUMN is_public_domain TYPE text"))
    result = run_sync(pg_database, weaviate_server_proc, selection=["Work"], raise_on_error=False, retries=2)
    _assert_refused_before_writing(
        result,
        weaviate_client,
        "table works, column is_public_domain is TEXT in the database, the registry needs a boolean",
    )
    # Every registry column of every table a step reads is checked: Author's step names its own.
    result = run_sync(pg_database, weaviate_server_proc, selection=["Author"], raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "table authors has no column biography" in failure.step_failure_data.user_failure_data.description
