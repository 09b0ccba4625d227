"""Fixtures shared by the whole suite: database URLs for SQLite and a private PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# the suite tests the Python sources (some tests swap module attributes); the compiled build is tested by a
# second pass with KFABRIC_NATIVE=1 (scripts/test.sh); this must come before anything imports kfabric
os.environ.setdefault("KFABRIC_NATIVE", "0")
# one audit key file for the whole run (servers and stores opened by tests sign their audit entries with it)
os.environ.setdefault("KFABRIC_AUDIT_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="kfabric-audit-")) / "audit.key"))
sys.path.insert(0, str(Path(__file__).parent))  # `from pg_server import ...` from any test folder

from pg_server import PgServer, find_pg_bin

PG_MISSING = "PostgreSQL not installed: apt-get install -y postgresql"
_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL server for the session; skipped if not installed, unless KFABRIC_REQUIRE_PG=1."""
    if find_pg_bin() is None:
        if os.environ.get("KFABRIC_REQUIRE_PG") == "1":
            pytest.fail(f"{PG_MISSING} (required: KFABRIC_REQUIRE_PG=1)", pytrace=False)
        pytest.skip(PG_MISSING)
    with PgServer() as server:
        yield server


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], ids=["sqlite", "postgresql"]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL to an empty database of its own: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/kfabric.db"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = f"t_{next(_db_numbers):04d}"
    yield server.create_database(name)
    server.drop_database(name)  # WITH (FORCE): also frees connections of engines the test did not dispose


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import kfabric

    if kfabric.BUILD != "native":
        return
    skip = pytest.mark.skip(reason="needs the Python sources (KFABRIC_NATIVE=0)")
    for item in items:
        if item.get_closest_marker("python_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def job_account() -> Iterator[str]:
    """The POSIX account test jobs run as (``posix_accounts.JOB_ACCOUNT``): created with useradd when root, deleted
    at the end of the session; the current account otherwise."""
    from posix_accounts import IS_ROOT, JOB_ACCOUNT, create_account, delete_account

    if not IS_ROOT:
        yield JOB_ACCOUNT
        return
    create_account(JOB_ACCOUNT)
    try:
        yield JOB_ACCOUNT
    finally:
        delete_account(JOB_ACCOUNT)


@pytest.fixture
def job_dir(job_account: str) -> Iterator[Path]:
    """A fresh directory that test jobs (running as ``job_account``) may read and write."""
    import shutil

    from posix_accounts import account_dir

    where = account_dir(job_account)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """A test that runs ``kfabric serve`` in this process sets its umask to 077 (serve_cmd.run): restore it, so files
    later tests create for other accounts (Slurm configs, job scripts) stay readable."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
