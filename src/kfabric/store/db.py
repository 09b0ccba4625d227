"""Engines, sessions and schema migration. ``sqlite:///PATH`` is the embedded default (WAL journal, a busy
timeout so concurrent writers wait instead of failing); ``postgresql+psycopg://...`` is the production store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import ValidationError

MIGRATIONS = Path(__file__).parent / "migrations"


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'kfabric.db'}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; raises :class:`DomainError` for a URL that is not SQLite or PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValidationError(
            "--db", f"not a database URL: {url!r}", "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValidationError(
                    "--db", f"cannot create the folder of {parsed.database!r}: {exc.strerror}", "use a writable path"
                ) from None
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)
    raise ValidationError(
        "--db",
        f"unsupported database {backend!r} in {url!r}",
        "use sqlite:///PATH (embedded) or postgresql+psycopg://USER@HOST:PORT/DB (production)",
    )


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # let SQLAlchemy issue BEGIN itself (see _sqlite_begin_immediate)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # take the write lock at BEGIN: a read-then-write transaction never fails half-way with "database is locked"
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(alembic_config(engine), "head")
