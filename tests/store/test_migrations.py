"""The Alembic migrations build exactly the schema ``store/tables.py`` declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from kfabric.model.errors import ValidationError
from kfabric.store.db import make_engine, migrate
from kfabric.store.tables import Base


def test_migrations_match_the_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"tables.py and the migrations differ; add a revision: {diff}"
        names = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= names
        assert "alembic_version" in names
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
    ],
    ids=["mysql", "garbage"],
)
def test_bad_database_urls_say_what_to_use(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        make_engine(url)
    assert problem in str(err.value)
    assert "sqlite:///" in str(err.value)
