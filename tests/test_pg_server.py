"""The database fixtures: SQLite and a real, private PostgreSQL server, one fresh database per test."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pg_server import PgServer, find_pg_bin

_seen_urls: set[str] = set()


def _roundtrip(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            conn.execute(sa.text("CREATE TABLE probe (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)"))
            conn.execute(sa.text("INSERT INTO probe (id, name) VALUES (:id, :name)"), [{"id": 1, "name": "a100"}])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, name FROM probe")).all() == [(1, "a100")]
    finally:
        engine.dispose()


def test_db_url_roundtrip(db_url: str) -> None:
    _roundtrip(db_url)


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_an_empty_database_of_its_own(db_url: str, run: int) -> None:
    assert db_url not in _seen_urls
    _seen_urls.add(db_url)
    engine = sa.create_engine(db_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:  # left behind on purpose: the other run must not see it
            conn.execute(sa.text("CREATE TABLE leftover (id INTEGER)"))
    finally:
        engine.dispose()


def test_find_pg_bin() -> None:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not installed")
    assert (bin_dir / "initdb").is_file()
    assert (bin_dir / "pg_ctl").is_file()


@pytest.mark.integration
def test_server_is_postgresql_15_or_later(pg_server: PgServer) -> None:
    engine = sa.create_engine(pg_server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version()")).scalar_one().startswith("PostgreSQL ")
            assert int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) >= 150000
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "off"
    finally:
        engine.dispose()


@pytest.mark.integration
def test_created_databases_are_separate(pg_server: PgServer) -> None:
    first, second = pg_server.create_database("t_sep_a"), pg_server.create_database("t_sep_b")
    try:
        _roundtrip(first)
        _roundtrip(second)  # would fail on CREATE TABLE if both URLs were the same database
    finally:
        pg_server.drop_database("t_sep_a")
        pg_server.drop_database("t_sep_b")


def test_bad_database_name_is_refused() -> None:
    with pytest.raises(ValueError, match="bad test database name"):
        PgServer._check_name("x; DROP")
