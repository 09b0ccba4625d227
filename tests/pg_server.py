"""A private, throwaway PostgreSQL server for tests.

`PgServer` runs initdb + pg_ctl in a fresh directory under /tmp on a free port, and removes everything on exit.
The server refuses to run as root, so as root every server command runs as the `postgres` user (runuser).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")
USER = "kfabric"
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PgServerError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or used."""


def find_pg_bin() -> Path | None:
    """The highest-versioned /usr/lib/postgresql/*/bin that has initdb and pg_ctl, or None."""
    found: list[tuple[int, Path]] = []
    for bin_dir in PG_ROOT.glob("*/bin"):
        version = bin_dir.parent.name
        if version.isdigit() and (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            found.append((int(version), bin_dir))
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """A PostgreSQL server of its own, started on enter and stopped (directory removed) on exit.

    `url` points at its `postgres` database; `create_database(name)` makes a fresh one and returns its URL.
    """

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise PgServerError(f"no PostgreSQL binaries under {PG_ROOT}/*/bin (apt-get install -y postgresql)")
        self.bin_dir = found
        self.port = 0
        self.dir: Path | None = None
        self._started = False
        self.start_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> PgServer:
        try:
            self.start()
        except BaseException:
            with contextlib.suppress(PgServerError):  # the start error is the one to report
                self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="kfabric-pg-", dir="/tmp"))
        self.dir.chmod(0o755)
        if os.geteuid() == 0:
            try:
                shutil.chown(self.dir, user="postgres")
            except LookupError as e:
                raise PgServerError("running as root but there is no 'postgres' user to run the server as") from e
        self._run(
            "initdb",
            ["-D", str(self.data_dir), "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"],
        )
        # The port is free when picked but could be taken before the server binds it: retry with another.
        for attempt in range(3):
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            args = ["-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "-o", opts, "start"]
            try:
                self._run("pg_ctl", args)
            except PgServerError:
                if attempt == 2 or "already in use" not in self._log_tail():
                    raise
                continue
            self._started = True
            break
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the server this object started (if any) and remove its directory."""
        try:
            # postmaster.pid also covers a start that timed out after the server came up.
            if self._started or (self.dir is not None and (self.data_dir / "postmaster.pid").exists()):
                try:
                    self._run("pg_ctl", ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"])
                except PgServerError:
                    self._run("pg_ctl", ["-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
                self._started = False
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    # -- use -----------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database `name` and return its SQLAlchemy URL."""
        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._check_name(name))))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, disconnecting whoever is still connected to it."""
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self._check_name(name))))

    # -- internals -------------------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "server directory not created (not started)"
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.dir is not None, "server directory not created (not started)"
        return self.dir / "log"

    @staticmethod
    def _check_name(name: str) -> str:
        if not _NAME_RE.fullmatch(name) or name in ("postgres", "template0", "template1"):
            raise ValueError(f"bad test database name {name!r}: lowercase letters, digits, _ (max 63)")
        return name

    def _execute(self, statement: sql.Composable) -> None:
        if not self._started:
            raise PgServerError("PostgreSQL test server is not running")
        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True) as c:
                c.execute(statement)
        except psycopg.Error as e:
            raise PgServerError(
                f"{statement.as_string(None)} failed on the test server (port {self.port}): {e}\n"
                f"--- server log (tail) ---\n{self._log_tail()}"
            ) from e

    def _run(self, tool: str, args: list[str]) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        # cwd: the postgres user may not be able to read the caller's working directory.
        proc = subprocess.run(cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            raise PgServerError(
                f"PostgreSQL test server: `{' '.join(cmd)}` exited {proc.returncode}\n{output}\n"
                f"--- server log (tail) ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        if self.dir is None or not self.log_file.exists():
            return "(no server log)"
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(server log unreadable: {e})"
