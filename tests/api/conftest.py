"""API fixtures: ``api`` (a runtime on the ``db_url`` store and a TestClient) and ``world`` (users of every role
and objects of two tenants, made through the API), per test on both stores; ``shared_world`` builds one world
per module and store for the large read-mostly tables (the isolation matrix, the bad-request table)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_world import Api, World, build_world, open_api

_shared_numbers = itertools.count(1)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with open_api(db_url) as a:
        yield a


@pytest.fixture
def world(api: Api) -> World:
    return build_world(api)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
    ids=["sqlite", "postgresql"],
)
def shared_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like ``db_url`` (tests/conftest.py), but one database per module and store."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("api")
        yield f"sqlite:///{path}/kfabric.db"
        return
    server = request.getfixturevalue("pg_server")
    name = f"t_api_{next(_shared_numbers):04d}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture(scope="module")
def shared_world(shared_db_url: str) -> Iterator[World]:
    """One world per module and store; tests that mutate it create their own target objects first."""
    with open_api(shared_db_url) as a:
        yield build_world(a)
