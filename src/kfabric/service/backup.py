"""Backups of the store, and restores that a controller resumes from (``kfabric backup`` / ``kfabric restore``).

SQLite: the online backup API (:meth:`sqlite3.Connection.backup`, all pages in one step, so one read transaction
of the WAL store: writers go on, and the copy is the store as of one commit, never a torn mix) into a temporary
file (0600) next to the destination, which is checked (``PRAGMA integrity_check``, a schema revision this kfabric
knows, row counts, the audit chain when the key file is at hand) and then renamed into place. PostgreSQL:
``pg_dump --format=custom`` (a consistent snapshot by itself) into the same kind of temporary file; the check
streams the archive back through ``pg_restore --data-only`` and counts the rows of every table.

A restore refuses a store that holds tables unless forced, and a SQLite store another process has open; it
copies the file into place atomically (removing a stale ``-wal``/``-shm`` first), or runs ``pg_restore --clean
--if-exists --single-transaction``, then migrates (:func:`kfabric.store.db.migrate`) and verifies the result.

The audit log is signed with a key kept outside the store (:mod:`kfabric.service.audit_keys`): no backup holds
it; it must be backed up on its own. Verification uses it when the key file exists and says so when it does not.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, func, inspect, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from kfabric.model.errors import Conflict, KfabricError, ValidationError
from kfabric.service import audit, audit_keys
from kfabric.service.audit_keys import Keyring
from kfabric.store.db import MIGRATIONS, make_engine, migrate

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
PG_ROOT = Path("/usr/lib/postgresql")
_COPY = re.compile(r'^COPY (?:"?[^\s."]+"?\.)?"?([^\s"(]+)"? \(.*\) FROM stdin;$')
_URL_FIX = "use sqlite:///PATH (embedded) or postgresql+psycopg://USER@HOST:PORT/DB (production)"
_PG_FIX = "install the PostgreSQL client of the server's major version (apt-get install -y postgresql-client)"


@dataclass(frozen=True)
class Verification:
    """What a check of a backup or a restored store found."""

    #: "ok", or why it does not apply (a PostgreSQL archive is checked by reading it back)
    integrity: str
    revision: str
    #: the newest revision this kfabric knows (a restore migrates an older store to it)
    head: str
    counts: dict[str, int]
    #: one sentence: how many entries verified with which keys, or why it was not checked or failed
    audit: str
    #: True: verified; False: does not verify with the key file; None: not checked
    audit_ok: bool | None = None


@dataclass(frozen=True)
class Outcome:
    kind: str  # "sqlite" | "postgresql"
    source: str
    target: str
    size_bytes: int
    seconds: float
    verification: Verification
    #: the audit key file looked at (it is never part of a backup)
    key_file: str = ""
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- entry points ---------------------------------------------------------------------------------------------


def backup(db_url: str, dest: Path, key_file: Path | None = None, now_s: float | None = None) -> Outcome:
    """Copy the store at ``db_url`` to ``dest`` (a file, or a folder to name it in) and check the copy."""
    kind = _kind(db_url)
    suffix = ".db" if kind == "sqlite" else ".dump"
    dest = _resolve_dest(dest, suffix, time.time() if now_s is None else now_s)
    t0 = time.monotonic()
    ring = load_ring(key_file)
    if kind == "sqlite":
        source = _sqlite_path(db_url)
        check = _backup_sqlite(source, dest, ring, key_file)
        where = str(source)
    else:
        check = _backup_pg(db_url, dest)
        where = make_url(db_url).render_as_string(hide_password=True)
    notes = _revision_notes(check)
    seconds = time.monotonic() - t0
    return Outcome(kind, where, str(dest), dest.stat().st_size, seconds, check, _text(key_file), notes)


def restore(backup_file: Path, db_url: str, force: bool = False, key_file: Path | None = None) -> Outcome:
    """Put the backup ``backup_file`` into the store at ``db_url``, migrate it and verify it."""
    kind = _kind(db_url)
    found = _backup_kind(backup_file)
    if found != kind:
        raise ValidationError(
            str(backup_file),
            f"is a {found} backup, but the target {_safe(db_url)} is a {kind} store",
            "restore a SQLite backup into sqlite:///PATH (or --state-dir) and a pg_dump archive into PostgreSQL",
        )
    t0 = time.monotonic()
    ring = load_ring(key_file)
    if kind == "sqlite":
        target = _sqlite_path(db_url)
        _restore_sqlite(backup_file, target, force)
    else:
        _restore_pg(backup_file, db_url, force)
    engine = make_engine(db_url)
    try:
        _migrate(engine, db_url)
        check = verify_store(engine, ring, key_file)
    finally:
        engine.dispose()
    size = backup_file.stat().st_size
    return Outcome(kind, str(backup_file), _safe(db_url), size, time.monotonic() - t0, check, _text(key_file))


def _revision_notes(check: Verification) -> tuple[str, ...]:
    if check.revision == check.head:
        return ()
    return (f"schema revision {check.revision} is older than this kfabric's {check.head}: a restore migrates it",)


def require_audit(outcome: Outcome, verb: str) -> None:
    """Raise when the audit log of a backup or restored store does not verify with the key file."""
    if outcome.verification.audit_ok is False:
        raise Conflict(
            outcome.target,
            f"{verb}, but its audit log does not verify with the key file {outcome.key_file}: "
            f"{outcome.verification.audit}",
            "use the audit key file that signed this log (--audit-key-file PATH); kfabric serve refuses to start "
            "on a store whose entries its key file cannot verify",
        )


def load_ring(key_file: Path | None) -> Keyring | None:
    """The audit keys in ``key_file``, or None when there is no such file (never creates one)."""
    if key_file is None or not Path(key_file).is_file():
        return None
    return audit_keys.load_or_create(Path(key_file))


# -- checks ---------------------------------------------------------------------------------------------------


def verify_store(engine: Engine, ring: Keyring | None, key_file: Path | None = None) -> Verification:
    """Integrity (SQLite), schema revision, row counts and, given keys, the audit chain of the store."""
    where = _safe(engine.url.render_as_string(hide_password=True))
    try:
        with engine.connect() as conn:
            integrity = _integrity(conn, where) if engine.dialect.name == "sqlite" else "not applicable (PostgreSQL)"
            revision, counts = _revision_and_counts(conn, where)
    except DBAPIError as exc:
        raise ValidationError(
            where, f"cannot be read: {_reason(exc)}", "use another backup (this one is damaged or not a store)"
        ) from None
    head = _check_revision(revision, where)
    text, ok = _verify_audit(engine, ring, key_file)
    return Verification(integrity, revision, head, counts, text, ok)


def _integrity(conn: Connection, where: str) -> str:
    rows = [str(r) for r in conn.exec_driver_sql("PRAGMA integrity_check").scalars()]
    if rows != ["ok"]:
        raise ValidationError(
            where,
            f"fails PRAGMA integrity_check: {'; '.join(rows[:3])}",
            "use another backup; a store that fails the check must not be trusted",
        )
    return "ok"


def _revision_and_counts(conn: Connection, where: str) -> tuple[str, dict[str, int]]:
    names = sorted(inspect(conn).get_table_names())
    if "alembic_version" not in names:
        raise ValidationError(where, "is not a store of kfabric (no alembic_version table)", "check the path or URL")
    revision = str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() or "")
    counts = {n: int(conn.execute(select(func.count()).select_from(table(n))).scalar_one()) for n in names}
    counts.pop("alembic_version")
    return revision, counts


def _check_revision(revision: str, where: str) -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head() or ""
    known = {r.revision for r in script.walk_revisions()}
    if revision not in known:
        raise ValidationError(
            where,
            f"has schema revision {revision or '(none)'!r}, unknown to this version of kfabric (its newest: {head})",
            "use the (newer) release that wrote the store, or another backup",
        )
    return head


def _verify_audit(engine: Engine, ring: Keyring | None, key_file: Path | None) -> tuple[str, bool | None]:
    if ring is None:
        where = f"no audit key file at {key_file}" if key_file else "no audit key file given"
        return f"not checked: {where} (give it with --audit-key-file PATH)", None
    audit_keys.use(engine, ring)
    with Session(engine) as session:
        try:
            ok = audit.verify_chain(session)
        except KfabricError as exc:
            return str(exc), False
    keys = ", ".join(ok.keys) or "-"
    return f"{ok.entries} entries verify with keys {keys} of {ring.path}", True


# -- SQLite ---------------------------------------------------------------------------------------------------


def _backup_sqlite(source: Path, dest: Path, ring: Keyring | None, key_file: Path | None) -> Verification:
    if not source.is_file():
        raise ValidationError(
            str(source), "no SQLite store here", "check --db or --state-dir (kfabric serve creates it on first start)"
        )
    if dest.exists() and dest.resolve() == source.resolve():
        raise ValidationError(str(dest), "is the store itself", "write the backup to another file")
    with _temporary_next_to(dest) as tmp:
        _online_copy(source, tmp)
        check = _verify_file(tmp, ring, key_file, str(source))
        _place(tmp, dest)
    return check


def _online_copy(source: Path, tmp: Path) -> None:
    """Every page of ``source`` in one step: one read transaction, so the copy is one commit's store."""
    try:
        with closing(_open_existing(source)) as src, closing(sqlite3.connect(tmp)) as dst:
            src.execute("PRAGMA busy_timeout=30000")
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # the backup is one self-contained file
    except sqlite3.Error as exc:
        raise ValidationError(
            str(source), f"cannot be copied: {exc}", "check that it is a kfabric SQLite store and readable"
        ) from None


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection to the database at ``path``; never creates a file (``mode=rw``)."""
    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True, timeout=30)


def _file_engine(path: Path) -> Engine:
    """A plain engine on a file we own (no WAL switch, no BEGIN IMMEDIATE: only reads happen here)."""
    return create_engine(f"sqlite:///file:{quote(str(path.resolve()))}?mode=rw&uri=true")


def _verify_file(path: Path, ring: Keyring | None, key_file: Path | None, where: str) -> Verification:
    engine = _file_engine(path)
    try:
        return verify_store(engine, ring, key_file)
    except ValidationError as exc:
        raise ValidationError(where, exc.problem, exc.fix) from None
    finally:
        engine.dispose()


def _restore_sqlite(backup_file: Path, target: Path, force: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if target.exists():
        _refuse_in_use(target)
        tables = _sqlite_tables(target)
        if tables and not force:
            raise _not_empty(str(target), tables)
    with _temporary_next_to(target) as tmp:
        with backup_file.open("rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _verify_file(tmp, None, None, str(backup_file))  # integrity and revision before anything is replaced
        for suffix in ("-wal", "-shm", "-journal"):  # a stale log would be replayed into the restored file
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        _place(tmp, target)


def _refuse_in_use(target: Path) -> None:
    """Refuse a store another process has open: in WAL mode an exclusive lock fails while any connection is open."""
    try:
        with closing(sqlite3.connect(f"file:{quote(str(target.resolve()))}?mode=rw", uri=True, timeout=0.2)) as c:
            c.isolation_level = None
            c.execute("PRAGMA locking_mode=EXCLUSIVE")
            c.execute("BEGIN EXCLUSIVE")
            c.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Conflict(
                str(target),
                "is open in another process (a running kfabric serve?)",
                "stop the service, then restore; a file replaced under a running service is lost to it",
            ) from None
    except sqlite3.DatabaseError:
        return  # not a database: nothing can have it open as one; the emptiness check decides


def _sqlite_tables(target: Path) -> list[str]:
    if target.stat().st_size == 0:
        return []
    try:
        with closing(_open_existing(target)) as c:
            rows = c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
            return sorted(str(r[0]) for r in rows)
    except sqlite3.DatabaseError:
        return ["(not a SQLite database)"]


# -- PostgreSQL -----------------------------------------------------------------------------------------------


def pg_tool(name: str) -> Path:
    """``pg_dump`` / ``pg_restore``: on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    found_in = [(int(p.parent.parent.name), p) for p in PG_ROOT.glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()]
    versions = sorted(found_in)
    if versions:
        return versions[-1][1]
    raise ValidationError(name, f"not found on PATH nor under {PG_ROOT}/*/bin", _PG_FIX)


def _libpq(db_url: str) -> tuple[str, dict[str, str]]:
    """The libpq URI of ``db_url`` (no password: it travels in PGPASSWORD, not on a command line)."""
    parsed = make_url(db_url)
    uri = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return uri, env


def _run_pg(tool: str, args: list[str], env: dict[str, str], where: str, fix: str) -> None:
    cmd = [str(pg_tool(tool)), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][:3]
        raise ValidationError(where, f"{tool} exited {proc.returncode}: {' / '.join(lines) or 'no message'}", fix)


def _backup_pg(db_url: str, dest: Path) -> Verification:
    uri, env = _libpq(db_url)
    where = _safe(db_url)
    with _temporary_next_to(dest) as tmp:
        args = ["--format=custom", "--no-password", f"--file={tmp}", f"--dbname={uri}"]
        _run_pg("pg_dump", args, env, where, "check the URL and that the server runs; " + _PG_FIX)
        check = _read_archive(tmp, where)
        _place(tmp, dest)
    return check


def _read_archive(path: Path, where: str) -> Verification:
    """Stream the archive's data back as text: every table's rows are counted, the schema revision read."""
    counts: dict[str, int] = {}
    revision = ""
    with tempfile.TemporaryFile() as err:
        cmd = [str(pg_tool("pg_restore")), "--data-only", "--file=-", str(path)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            assert proc.stdout is not None
            for name, row in _copy_rows(proc.stdout):
                counts[name] = counts.get(name, 0) + (row is not None)
                if name == "alembic_version" and row:
                    revision = row
        if proc.returncode != 0:
            err.seek(0)
            raise ValidationError(
                where, f"the archive cannot be read back: {_first_line(err)}", "take the backup again (disk full?)"
            )
    if "alembic_version" not in counts:
        raise ValidationError(where, "is not a store of kfabric (no alembic_version table)", "check the URL")
    counts.pop("alembic_version")
    head = _check_revision(revision, where)
    text = "checked at restore (a pg_dump archive is not a database)"
    return Verification("archive reads back whole (pg_restore)", revision, head, counts, text, None)


def _copy_rows(lines: Iterator[str]) -> Iterator[tuple[str, str | None]]:
    """``(table, row)`` per data line of ``pg_restore --data-only`` text, and ``(table, None)`` per COPY block."""
    current: str | None = None
    for line in lines:
        if current is None:
            m = _COPY.match(line.rstrip("\n"))
            if m:
                current = m.group(1)
                yield current, None
        elif line == "\\.\n":
            current = None
        else:
            yield current, line.rstrip("\n")


def _restore_pg(backup_file: Path, db_url: str, force: bool) -> None:
    where = _safe(db_url)
    _check_pg_target(db_url, force)
    _run_pg("pg_restore", ["--list", str(backup_file)], dict(os.environ), str(backup_file),
            "use another backup (this one is damaged or not a pg_dump --format=custom archive)")  # fmt: skip
    uri, env = _libpq(db_url)
    args = ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"]
    _run_pg("pg_restore", [*args, "--no-password", f"--dbname={uri}", str(backup_file)], env, where,
            "nothing was changed (one transaction); fix the cause above and restore again")  # fmt: skip


def _check_pg_target(db_url: str, force: bool) -> None:
    where = _safe(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = sorted(inspect(conn).get_table_names())
            others = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar_one()
    except DBAPIError as exc:
        raise ValidationError(
            where, f"cannot connect: {_reason(exc)}", "create the database first (createdb) and check the URL"
        ) from None
    finally:
        engine.dispose()
    if others:
        raise Conflict(where, f"has {others} other open connection(s) (a running kfabric serve?)",
                       "stop every service on this database, then restore")  # fmt: skip
    if tables and not force:
        raise _not_empty(where, tables)


# -- files ----------------------------------------------------------------------------------------------------


def _resolve_dest(dest: Path, suffix: str, now_s: float) -> Path:
    dest = Path(dest)
    if dest.is_dir():
        stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%dT%H%M%SZ")
        return dest / f"kfabric-{stamp}{suffix}"
    if not dest.parent.is_dir():
        raise ValidationError(str(dest), "its folder does not exist", f"create it first: mkdir -p {dest.parent}")
    return dest


@contextmanager
def _temporary_next_to(path: Path) -> Iterator[Path]:
    """A new empty file (0600) in ``path``'s folder, removed unless it was renamed into place."""
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ValidationError(str(path), f"cannot write there: {exc.strerror}", "choose a writable folder") from None
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _place(tmp: Path, dest: Path) -> None:
    """Durably rename ``tmp`` over ``dest``: the file's data, then the rename, reach the disk."""
    os.chmod(tmp, 0o600)
    _fsync(tmp, os.O_RDONLY)
    os.replace(tmp, dest)
    _fsync(dest.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_kind(path: Path) -> str:
    try:
        with Path(path).open("rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise ValidationError(str(path), "no such backup file", "check the path (kfabric backup prints it)") from None
    except IsADirectoryError:
        raise ValidationError(str(path), "is a folder, not a backup file", "name the file inside it") from None
    if magic.startswith(SQLITE_MAGIC):
        return "sqlite"
    if magic.startswith(PG_MAGIC):
        return "postgresql"
    raise ValidationError(
        str(path),
        "is neither a SQLite store nor a pg_dump --format=custom archive (damaged, or another file)",
        "use a file written by kfabric backup or pg_dump --format=custom",
    )


# -- small helpers --------------------------------------------------------------------------------------------


def _kind(db_url: str) -> str:
    """``sqlite`` or ``postgresql``; anything else is refused as ``kfabric serve`` refuses it (connects to nothing)."""
    try:
        backend = make_url(db_url).get_backend_name()
    except ArgumentError:
        raise ValidationError("--db", f"not a database URL: {db_url!r}", _URL_FIX) from None
    if backend not in ("sqlite", "postgresql"):
        raise ValidationError("--db", f"unsupported database {backend!r} in {db_url!r}", _URL_FIX)
    return backend


def _sqlite_path(db_url: str) -> Path:
    database = make_url(db_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValidationError("--db", f"{db_url!r} names no database file", "use sqlite:///PATH or --state-dir DIR")
    return Path(database)


def _not_empty(where: str, tables: list[str]) -> Conflict:
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    return Conflict(
        where,
        f"is not empty ({len(tables)} tables: {shown})",
        "restore into a new --db/--state-dir, or add --force to replace this store with the backup",
    )


def _safe(db_url: str) -> str:
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the store"


def _text(path: Path | None) -> str:
    return str(path) if path is not None else ""


def _reason(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return (text.strip().splitlines() or ["unknown error"])[0]


def _first_line(f: BinaryIO) -> str:
    text = f.read().decode(errors="replace").strip()
    return (text.splitlines() or ["no message"])[0]


def _migrate(engine: Engine, db_url: str) -> None:
    try:
        migrate(engine)
    except DBAPIError as exc:
        raise ValidationError(
            _safe(db_url), f"restored, but migrating it failed: {_reason(exc)}", "check the server's log, then retry"
        ) from None
