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

The batch's statements (one ``SELECT`` for its projects, one for its client keys, the job inserts, the chain-head
read and update, one ``executemany`` each for the audit entries and the events) are kfabric.store.group_commit's;
this module decides what they write. The answers are detached :class:`kfabric.store.tables.Job` objects built from
the inserted values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, KfabricError, NotFound
from kfabric.model.job import JobState
from kfabric.service import audit_keys
from kfabric.service.actors import Actor
from kfabric.service.audit import GENESIS, entry_digest
from kfabric.store import group_commit
from kfabric.store import tables as t
from kfabric.store.group_commit import JOB_COLUMNS, AuditParams, EventParams, detached

log = logging.getLogger("kfabric.submissions")

#: seconds an idle writer thread waits for the next submission before it ends (a new one starts on demand)
WRITER_LINGER_S = 0.5
#: most submissions in one transaction
MAX_BATCH = 256

Outcome = tuple[t.Job, bool]
__all__ = ["JOB_COLUMNS", "GroupCommitter", "Submission", "commit_batch", "committer", "key_conflict", "task_values"]


@dataclass(slots=True)
class Submission:
    """One validated submission (permission and spec checked by the caller) waiting for its batch."""

    actor: Actor
    project_name: str
    spec: dict[str, Any]
    now_s: float
    client_key: str | None
    future: Future[Outcome] = field(default_factory=Future)
    #: job-row columns beyond the spec (script snapshot, dependency, hold, begin: ``jobspec.control_columns``)
    columns: dict[str, Any] = field(default_factory=dict)
    #: an array's task indices, ascending (empty: not an array); the first task is the row the answer names
    tasks: tuple[int, ...] = ()

    def same_request(self, row: t.Job) -> bool:
        """Whether ``row`` (found by this submission's client key) was created by the same request."""
        return bool(row.spec == self.spec and row.script == self.columns.get("script"))

    def audit_detail(self, job_id: int, last_id: int | None = None) -> dict[str, Any]:
        """The ``job.submit`` audit entry's detail: the script as its SHA-256 and size, an array's size and ids."""
        detail: dict[str, Any] = {}
        script = self.columns.get("script")
        if script is not None:
            data = str(script).encode()
            detail["script_sha256"], detail["script_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        if self.tasks:
            detail["array"] = str(self.spec.get("array", ""))
            detail["tasks"], detail["first_id"], detail["last_id"] = len(self.tasks), job_id, last_id or job_id
        return detail


def _job_values(sub: Submission, project_id: int) -> dict[str, Any]:
    """Every column of the new job row but its id (all given: one ``INSERT`` shape for the whole batch)."""
    values = {
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
        "reserved_su_hours": 0.0,
        "script": None,
        "array_job_id": None,
        "array_task_id": None,
        "dependency": "",
        "kill_on_invalid_dep": True,
        "held_by": "",
        "begin_at_s": None,
        "priority_adjust": 0.0,
        "stdout_path": "",
        "stderr_path": "",
        "expected_start_why": "",
    }
    values.update(sub.columns)
    if sub.tasks:
        values["array_task_id"] = sub.tasks[0]
    return values


def task_values(head: dict[str, Any], array_job_id: int, task: int) -> dict[str, Any]:
    """The row of task ``task`` of the array whose first task's values are ``head`` (only the first task carries
    the client key)."""
    return {**head, "id": None, "client_key": None, "array_job_id": array_job_id, "array_task_id": task}


def commit_batch(sessions: sessionmaker[Session], batch: Sequence[Submission]) -> list[Outcome | KfabricError]:
    """Commit ``batch`` in one transaction; per member its ``(job, created)`` or the domain error that is its
    answer alone (an unknown or invisible project). Storage errors raise, and nothing is committed."""
    engine = sessions.kw["bind"]
    out: list[Outcome | KfabricError | None] = [None] * len(batch)
    with group_commit.batch(engine) as w:
        projects = w.projects(sorted({s.project_name for s in batch}))
        wanted: list[tuple[int, Submission, int, int]] = []  # (index, submission, project id, organization id)
        for i, sub in enumerate(batch):
            found = projects.get(sub.project_name)
            if found is None or not sub.actor.sees_project(*found):
                out[i] = NotFound("project", sub.project_name, "kfabric projects lists the projects you belong to")
            else:
                wanted.append((i, sub, found[0], found[1]))
        existing = w.jobs_by_client_key([(pid, s.client_key) for _i, s, pid, _o in wanted if s.client_key is not None])
        new: list[tuple[int, Submission, int, dict[str, Any]]] = []  # (index, submission, organization, values)
        first_of: dict[tuple[int, str], int] = {}  # a client key this batch creates → the creating index
        repeats: list[tuple[int, int]] = []  # (index, index of the member that creates its job)
        for i, sub, pid, org in wanted:
            if sub.client_key is not None:
                key = (pid, sub.client_key)
                if key in existing:
                    hit = existing[key]
                    out[i] = (hit, False) if sub.same_request(hit) else key_conflict(sub.client_key, hit.id)
                    continue
                if key in first_of:
                    repeats.append((i, first_of[key]))
                    continue
                first_of[key] = i
            new.append((i, sub, org, _job_values(sub, pid)))
        if new:
            ids = w.insert_jobs([v for *_, v in new])
            head = w.chain_head()
            prev, count = head if head is not None else (GENESIS, 0)
            entries: list[AuditParams] = []
            events: list[EventParams] = []
            ring = audit_keys.for_engine(engine)
            for (i, sub, org, values), job_id in zip(new, ids, strict=True):
                name, object_id = sub.actor.name, str(job_id)
                last_id = None
                if sub.tasks:  # an array: the other tasks, all at once, under the first task's id
                    values["array_job_id"] = job_id
                    w.set_array(job_id)
                    rest = [task_values(values, job_id, k) for k in sub.tasks[1:]]
                    task_ids = w.insert_jobs(rest) if rest else []
                    events.extend((tid, sub.now_s, "", "pending", "submitted") for tid in task_ids)
                    last_id = task_ids[-1] if task_ids else job_id
                detail = sub.audit_detail(job_id, last_id)
                kid, digest = entry_digest(ring, prev, sub.now_s, name, "job.submit", "job", object_id, org, detail)
                text = json.dumps(detail)
                entries.append((sub.now_s, name, "job.submit", "job", object_id, org, text, prev, digest, kid))
                events.append((job_id, sub.now_s, "", "pending", "submitted"))
                prev = digest
                values["id"] = job_id
                out[i] = (detached(values), True)
            w.append(entries, events)
            w.set_chain_head(prev, count + len(entries), existed=head is not None)
    for i, j in repeats:
        first = out[j]
        assert isinstance(first, tuple)
        sub = batch[i]
        out[i] = (first[0], False) if sub.same_request(first[0]) else key_conflict(sub.client_key, first[0].id)
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


def key_conflict(client_key: str | None, job_id: int) -> Conflict:
    """The answer to a client key used again with a different request (409): a retry must resend the same body."""
    return Conflict(
        f"client_key {client_key!r}",
        f"was used for job {job_id} with a different request",
        "resend the identical request to get that job, or use a new client key for a new submission",
    )


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
                self._start()
            else:
                self._cv.notify()
        return sub.future

    def _start(self) -> None:  # holding self._cv
        self._writer = threading.Thread(target=self._run, name="kfabric-submit-writer", daemon=True)
        self._writer.start()

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
        batch: list[tuple[sessionmaker[Session], Submission]] = []
        try:
            while batch := self._take():
                # members of one queue share their database; they may hold different sessionmakers of it
                by_maker: dict[int, list[Submission]] = {}
                makers: dict[int, sessionmaker[Session]] = {}
                for sessions, sub in batch:
                    by_maker.setdefault(id(sessions), []).append(sub)
                    makers[id(sessions)] = sessions
                for key, subs in by_maker.items():
                    self._commit(makers[key], subs)
                batch, by_maker, makers = [], {}, {}  # hold no store references while idle
        finally:
            # only if this writer itself failed (a bug): no request may wait forever, and the queue goes on
            for _sessions, sub in batch:
                if not sub.future.done():
                    sub.future.set_exception(RuntimeError("the submission writer failed; retry the submission"))
            with self._cv:
                if self._writer is threading.current_thread():
                    log.error("the submission writer failed; starting another")
                    self._writer = None
                    if self._queue:
                        self._start()

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
