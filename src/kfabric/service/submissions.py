"""Group commit of job submissions.

Submissions that arrive while the store is busy committing earlier ones queue for one writer thread per
database, which commits everything that queued in one transaction (a *batch*). Inside the batch each job still
gets its own ``submitted`` event and its own hash-chained audit entry, appended in queue order, so the audit
log reads exactly as if the submissions had committed one after another; but the batch takes the chain-head
lock, and pays the commit, once. Nothing waits on purpose: a batch is whatever queued during the previous
commit (one submission when the service is idle).

A submission is answered only after its batch committed. If the batch fails as a whole (a storage error, or a
concurrent writer outside this process took a client key first), each member is retried on its own, in its own
transaction, so one bad submission fails alone. Idempotency by ``(project, client_key)`` holds inside a batch
too: the second request with a key the batch already creates gets the first one's job (``created`` False).

The statements are SQLAlchemy Core (one ``SELECT`` for the batch's projects, one for its client keys, one
multi-row ``INSERT ... RETURNING`` for the jobs, one each for their audit entries and events, and the chain-head
update); the answers are detached :class:`kfabric.store.tables.Job` objects built from the inserted values.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, Table, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker
from sqlalchemy.orm.instrumentation import manager_of_class

from kfabric.model.errors import KfabricError, NotFound
from kfabric.model.job import JobState
from kfabric.service.actors import Actor
from kfabric.service.audit import GENESIS, _digest
from kfabric.store import tables as t

log = logging.getLogger("kfabric.submissions")

#: seconds an idle writer thread waits for the next submission before it ends (a new one starts on demand)
WRITER_LINGER_S = 0.5
#: most submissions in one transaction
MAX_BATCH = 256

Outcome = tuple[t.Job, bool]

_JOBS = cast(Table, t.Job.__table__)
_EVENTS = cast(Table, t.JobEvent.__table__)
_AUDIT = cast(Table, t.AuditEntry.__table__)
_PROJECTS = cast(Table, t.Project.__table__)
_HEAD = cast(Table, t.ChainHead.__table__)


@dataclass(slots=True)
class Submission:
    """One validated submission (permission and spec checked by the caller) waiting for its batch."""

    actor: Actor
    project_name: str
    spec: dict[str, Any]
    now_s: float
    client_key: str | None
    future: Future[Outcome] = field(default_factory=Future)


def _job_values(sub: Submission, project_id: int) -> dict[str, Any]:
    """Every column of the new job row but its id (all given: one ``INSERT`` shape for the whole batch)."""
    return {
        "project_id": project_id,
        "user_id": sub.actor.user_id,
        "client_key": sub.client_key,
        "name": str(sub.spec.get("name", "")),
        "spec": sub.spec,
        "state": JobState.PENDING.value,
        "reason_code": "new",
        "reason": "submitted; waiting for the next scheduling cycle",
        "expected_start_s": None,
        "submitted_at_s": sub.now_s,
        "admitted_at_s": None,
        "started_at_s": None,
        "ended_at_s": None,
        "accounted_to_s": None,
        "exit_code": None,
        "placement": None,
        "grant_id": None,
        "borrowed": False,
        "guaranteed": False,
        "backend": "",
        "attempt": 0,
        "launched": False,
        "cancel_requested": False,
        "preempt_requested": False,
        "last_checkpoint_s": None,
        "attained_gpu_s": 0.0,
    }


_JOB_CLASS = manager_of_class(t.Job)


def _detached(values: dict[str, Any]) -> t.Job:
    """A :class:`t.Job` for a row that is in the store, as a session that loaded it and closed would leave it: its
    column values put in place as loading does (not through the attribute events of ``t.Job(**values)``, which
    cost ~0.1 ms a job), then given its identity."""
    row: t.Job = _JOB_CLASS.new_instance()
    row.__dict__.update(values)
    make_transient_to_detached(row)
    return row


def commit_batch(sessions: sessionmaker[Session], batch: Sequence[Submission]) -> list[Outcome | KfabricError]:
    """Commit ``batch`` in one transaction; per member its ``(job, created)`` or the domain error that is its
    answer alone (an unknown or invisible project). Storage errors raise, and nothing is committed."""
    out: list[Outcome | KfabricError | None] = [None] * len(batch)
    with sessions.begin() as session:
        conn = session.connection()
        names = sorted({s.project_name for s in batch})
        projects = {
            name: (pid, org)
            for pid, name, org in conn.execute(
                select(_PROJECTS.c.id, _PROJECTS.c.name, _PROJECTS.c.organization_id).where(_PROJECTS.c.name.in_(names))
            )
        }
        wanted: list[tuple[int, Submission, int, int]] = []  # (index, submission, project id, organization id)
        for i, sub in enumerate(batch):
            found = projects.get(sub.project_name)
            if found is None or not sub.actor.sees_project(*found):
                out[i] = NotFound("project", sub.project_name, "kfabric projects lists the projects you belong to")
            else:
                wanted.append((i, sub, found[0], found[1]))
        keyed = [(pid, sub.client_key) for _i, sub, pid, _o in wanted if sub.client_key is not None]
        existing: dict[tuple[int, str], t.Job] = {}
        if keyed:
            rows = conn.execute(
                select(_JOBS).where(
                    _JOBS.c.project_id.in_(sorted({p for p, _k in keyed})),
                    _JOBS.c.client_key.in_(sorted({k for _p, k in keyed})),
                )
            )
            for r in rows:
                existing[(r.project_id, r.client_key)] = _detached(dict(r._mapping))
        new: list[tuple[int, Submission, int, dict[str, Any]]] = []  # (index, submission, organization, values)
        first_of: dict[tuple[int, str], int] = {}  # a client key this batch creates → the creating index
        repeats: list[tuple[int, int]] = []  # (index, index of the member that creates its job)
        for i, sub, pid, org in wanted:
            if sub.client_key is not None:
                key = (pid, sub.client_key)
                if key in existing:
                    out[i] = (existing[key], False)
                    continue
                if key in first_of:
                    repeats.append((i, first_of[key]))
                    continue
                first_of[key] = i
            new.append((i, sub, org, _job_values(sub, pid)))
        if new:
            ids = [
                r[0]
                for r in conn.execute(
                    insert(_JOBS).returning(_JOBS.c.id, sort_by_parameter_order=True), [v for *_, v in new]
                )
            ]
            head = conn.execute(select(_HEAD.c.hash, _HEAD.c.count).where(_HEAD.c.id == 1).with_for_update()).first()
            prev, count = (str(head[0]), int(head[1])) if head is not None else (GENESIS, 0)
            entries: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for (i, sub, org, values), job_id in zip(new, ids, strict=True):
                digest = _digest(prev, sub.now_s, sub.actor.name, "job.submit", "job", str(job_id), {})
                entries.append(
                    {
                        "at_s": sub.now_s,
                        "actor": sub.actor.name,
                        "action": "job.submit",
                        "object_type": "job",
                        "object_id": str(job_id),
                        "organization_id": org,
                        "detail": {},
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                events.append(
                    {
                        "job_id": job_id,
                        "at_s": sub.now_s,
                        "from_state": "",
                        "to_state": "pending",
                        "reason": "submitted",
                    }
                )
                prev = digest
                values["id"] = job_id
                out[i] = (_detached(values), True)
            conn.execute(insert(_AUDIT), entries)
            conn.execute(insert(_EVENTS), events)
            if head is None:
                conn.execute(insert(_HEAD).values(id=1, hash=prev, count=len(entries)))
            else:
                conn.execute(update(_HEAD).where(_HEAD.c.id == 1).values(hash=prev, count=count + len(entries)))
        for i, j in repeats:
            first = out[j]
            assert isinstance(first, tuple)
            out[i] = (first[0], False)
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


SubmitOne = Callable[[sessionmaker[Session], Submission], Outcome]


class GroupCommitter:
    """The queue and writer thread of one database. ``enqueue`` returns at once with the submission's future;
    the writer commits what queued, resolves the futures, and ends after :data:`WRITER_LINGER_S` idle."""

    def __init__(self, submit_one: SubmitOne) -> None:
        self._submit_one = submit_one
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[tuple[sessionmaker[Session], Submission]] = []
        self._writer: threading.Thread | None = None

    def enqueue(self, sessions: sessionmaker[Session], sub: Submission) -> Future[Outcome]:
        with self._cv:
            self._queue.append((sessions, sub))
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="kfabric-submit-writer", daemon=True)
                self._writer.start()
            else:
                self._cv.notify()
        return sub.future

    def _take(self) -> list[tuple[sessionmaker[Session], Submission]]:
        with self._cv:
            if not self._queue:
                self._cv.wait(WRITER_LINGER_S)
            if not self._queue:
                self._writer = None
                return []
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            return batch

    def _run(self) -> None:
        while batch := self._take():
            # members of one queue share their database; they may hold different sessionmakers of it
            by_maker: dict[int, list[Submission]] = {}
            makers: dict[int, sessionmaker[Session]] = {}
            for sessions, sub in batch:
                by_maker.setdefault(id(sessions), []).append(sub)
                makers[id(sessions)] = sessions
            for key, subs in by_maker.items():
                self._commit(makers[key], subs)
            del batch, by_maker, makers  # hold no store references while idle

    def _commit(self, sessions: sessionmaker[Session], subs: list[Submission]) -> None:
        live = [s for s in subs if s.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outcomes = commit_batch(sessions, live)
        except Exception:
            if len(live) > 1:
                log.warning("a batch of %d submissions failed; retrying them one by one", len(live), exc_info=True)
            for sub in live:
                try:
                    sub.future.set_result(self._submit_one(sessions, sub))
                except BaseException as exc:  # the member's own answer
                    sub.future.set_exception(exc)
            return
        for sub, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, KfabricError):
                sub.future.set_exception(outcome)
            else:
                sub.future.set_result(outcome)


_committers: weakref.WeakKeyDictionary[Engine, GroupCommitter] = weakref.WeakKeyDictionary()
_committers_lock = threading.Lock()


def committer(sessions: sessionmaker[Session], submit_one: SubmitOne) -> GroupCommitter:
    """The committer of ``sessions``' database (one per engine, so one writer per store in this process)."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, Engine):
        raise TypeError("submissions need a sessionmaker bound to an Engine")
    with _committers_lock:
        found = _committers.get(engine)
        if found is None:
            found = _committers[engine] = GroupCommitter(submit_one)
        return found
