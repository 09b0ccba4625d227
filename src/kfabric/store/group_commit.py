"""The SQL of a group commit of job submissions (the decisions are kfabric.service.submissions').

One :func:`batch` is one transaction: one ``SELECT`` for its projects, one for its client keys, the job inserts
(their ids returned), the chain-head read (``FOR UPDATE`` on PostgreSQL), one ``executemany`` each for the audit
entries and the events, and the chain-head update. They are written out for the DB-API cursor of the
transaction's connection (:class:`Statements`): SQLAlchemy's statement construction, caching and execution
machinery cost ~0.15 ms a statement, more than the statement itself. Rows handed back are detached
:class:`kfabric.store.tables.Job` objects built from the inserted values (:func:`detached`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.instrumentation import manager_of_class

from kfabric.store import tables as t

_JOBS = cast(Table, t.Job.__table__)
_EVENTS = cast(Table, t.JobEvent.__table__)
_AUDIT = cast(Table, t.AuditEntry.__table__)
_PROJECTS = cast(Table, t.Project.__table__)
_HEAD = cast(Table, t.ChainHead.__table__)

#: the columns of a new job row, in the order of :attr:`Statements.insert_job` (every one given: one ``INSERT``
#: shape for the whole batch)
JOB_COLUMNS = (
    "project_id", "user_id", "client_key", "name", "spec", "state", "reason_code", "reason", "expected_start_s",
    "submitted_at_s", "admitted_at_s", "started_at_s", "ended_at_s", "accounted_to_s", "exit_code", "placement",
    "grant_id", "borrowed", "guaranteed", "backend", "attempt", "launched", "cancel_requested", "preempt_requested",
    "last_checkpoint_s", "attained_gpu_s", "reserved_su_hours", "script", "array_job_id", "array_task_id",
    "dependency", "kill_on_invalid_dep", "held_by", "begin_at_s", "priority_adjust", "stdout_path", "stderr_path",
    "expected_start_why",
)  # fmt: skip
_JSON_COLUMNS = frozenset(("spec", "placement"))
#: an audit entry's parameters: (at_s, actor, action, object_type, object_id, organization_id, detail as JSON text,
#: prev_hash, hash, key_id)
AuditParams = tuple[float, str, str, str, str, int | None, str, str, str, str]
#: a job event's parameters: (job_id, at_s, from_state, to_state, reason)
EventParams = tuple[int, float, str, str, str]

_JOB_CLASS = manager_of_class(t.Job)


def detached(values: dict[str, Any]) -> t.Job:
    """A :class:`t.Job` for a row that is in the store, as a session that loaded it and closed would leave it: its
    column values put in place as loading does (not through the attribute events of ``t.Job(**values)``, which
    cost ~0.1 ms a job), then given its identity."""
    row: t.Job = _JOB_CLASS.new_instance()
    row.__dict__.update(values)
    make_transient_to_detached(row)
    return row


def _params(values: dict[str, Any]) -> tuple[Any, ...]:
    """The DB-API parameters of a new job: JSON columns as their text (None stays NULL), as SQLAlchemy's JSON
    type writes them."""
    return tuple(
        json.dumps(values[c]) if c in _JSON_COLUMNS and values[c] is not None else values[c] for c in JOB_COLUMNS
    )


class Statements:
    """The batch's SQL for one dialect, with the DB-API's own placeholders. ``sqlite`` inserts the jobs one
    ``execute`` each (their ids from ``lastrowid``); ``postgresql`` runs one pipelined ``executemany`` with
    ``RETURNING id``."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.ph = "%s" if self.pg else "?"
        cols = ", ".join(JOB_COLUMNS)
        self.insert_job = f"INSERT INTO {_JOBS.name} ({cols}) VALUES ({self.marks(len(JOB_COLUMNS))})"
        if self.pg:
            self.insert_job += " RETURNING id"
        self.head = f"SELECT hash, count FROM {_HEAD.name} WHERE id = 1" + (" FOR UPDATE" if self.pg else "")
        self.insert_entry = (
            f"INSERT INTO {_AUDIT.name} (at_s, actor, action, object_type, object_id, organization_id, detail,"
            f" prev_hash, hash, key_id) VALUES ({self.marks(10)})"
        )
        self.insert_event = (
            f"INSERT INTO {_EVENTS.name} (job_id, at_s, from_state, to_state, reason) VALUES ({self.marks(5)})"
        )
        self.set_array = f"UPDATE {_JOBS.name} SET array_job_id = {self.ph} WHERE id = {self.ph}"
        self.insert_head = f"INSERT INTO {_HEAD.name} (id, hash, count) VALUES (1, {self.ph}, {self.ph})"
        self.update_head = f"UPDATE {_HEAD.name} SET hash = {self.ph}, count = {self.ph} WHERE id = 1"

    def marks(self, n: int) -> str:
        return ", ".join([self.ph] * n)

    def projects(self, n: int) -> str:
        return f"SELECT id, name, organization_id FROM {_PROJECTS.name} WHERE name IN ({self.marks(n)})"

    def keys(self, n_projects: int, n_keys: int) -> str:
        return (
            f"SELECT id, project_id, client_key FROM {_JOBS.name} WHERE project_id IN ({self.marks(n_projects)})"
            f" AND client_key IN ({self.marks(n_keys)})"
        )


_statements: dict[str, Statements] = {}


def statements(dialect: str) -> Statements:
    """The (cached) statements of ``dialect``."""
    return _statements.get(dialect) or _statements.setdefault(dialect, Statements(dialect))


class BatchWriter:
    """The statements of one group-commit transaction, run on its connection's DB-API cursor."""

    def __init__(self, conn: Connection, cur: Any, sql: Statements) -> None:
        self.conn, self.cur, self.sql = conn, cur, sql

    def projects(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Project name → (id, organization id), for the names that exist."""
        self.cur.execute(self.sql.projects(len(names)), list(names))
        return {str(name): (int(pid), int(org)) for pid, name, org in self.cur.fetchall()}

    def jobs_by_client_key(self, keyed: Sequence[tuple[int, str]]) -> dict[tuple[int, str], t.Job]:
        """The jobs already stored under these (project id, client key) pairs, as detached rows."""
        if not keyed:
            return {}
        pids, keys = sorted({p for p, _k in keyed}), sorted({k for _p, k in keyed})
        self.cur.execute(self.sql.keys(len(pids), len(keys)), [*pids, *keys])
        hits = {int(job_id): (int(pid), str(key)) for job_id, pid, key in self.cur.fetchall()}
        wanted = set(keyed)
        found: dict[tuple[int, str], t.Job] = {}
        if hits:  # rare (a retried submission): whole rows, through SQLAlchemy's types
            for r in self.conn.execute(select(_JOBS).where(_JOBS.c.id.in_(sorted(hits)))).mappings():
                if hits[r["id"]] in wanted:
                    found[hits[r["id"]]] = detached(dict(r))
        return found

    def insert_jobs(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert new jobs (every column of :data:`JOB_COLUMNS` given); their ids, in order."""
        params = [_params(v) for v in rows]
        if self.sql.pg:
            self.cur.executemany(self.sql.insert_job, params, returning=True)
            ids = []
            while True:
                ids.append(int(self.cur.fetchone()[0]))
                if not self.cur.nextset():
                    return ids
        out = []
        for row in params:
            self.cur.execute(self.sql.insert_job, row)
            out.append(int(self.cur.lastrowid))
        return out

    def set_array(self, job_id: int) -> None:
        """Make job ``job_id`` the first task of its own array."""
        self.cur.execute(self.sql.set_array, (job_id, job_id))

    def chain_head(self) -> tuple[str, int] | None:
        """The audit chain's head (hash, entries), locked until the transaction ends; None before the first."""
        self.cur.execute(self.sql.head)
        head = self.cur.fetchone()
        return (str(head[0]), int(head[1])) if head is not None else None

    def append(self, entries: Sequence[AuditParams], events: Sequence[EventParams]) -> None:
        """Insert audit entries and job events (one ``executemany`` each)."""
        self.cur.executemany(self.sql.insert_entry, entries)
        self.cur.executemany(self.sql.insert_event, events)

    def set_chain_head(self, digest: str, count: int, existed: bool) -> None:
        self.cur.execute(self.sql.update_head if existed else self.sql.insert_head, (digest, count))


@contextmanager
def batch(engine: Engine) -> Iterator[BatchWriter]:
    """One transaction (on SQLite ``BEGIN IMMEDIATE``, store/db.py: the write lock for the whole batch), committed
    when the block ends without an error."""
    sql = statements(engine.dialect.name)
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            yield BatchWriter(conn, cur, sql)
        finally:
            cur.close()
