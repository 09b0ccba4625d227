"""Group commit of job submissions (kfabric.service.submissions) on SQLite and PostgreSQL: what one batch
creates (idempotency by client key inside a batch, tenant visibility per member), the audit chain after
batched commits, queue order, a bad member failing alone, and concurrent submitters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, KfabricError, NotFound
from kfabric.service import audit, jobs, submissions
from kfabric.service.actors import Actor, Role
from kfabric.service.submissions import GroupCommitter, Submission, commit_batch
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

NOW = 1_800_000_000.0
SPEC: dict[str, Any] = {"gpus": 1, "time_limit_s": 60.0, "command": "true"}


@dataclass
class Store:
    sessions: sessionmaker[Session]
    actors: dict[str, Actor]

    def sub(self, who: str, project: str, key: str | None, name: str = "") -> Submission:
        spec = {**SPEC, "name": name} if name else dict(SPEC)
        return jobs.prepare(self.actors[who], project, spec, NOW, key)

    def count(self, table: type[t.Base]) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)

    def verify(self) -> int:
        with self.sessions() as s:
            return audit.verify_chain(s).entries


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """Two organizations with a project each; an operator, two members of ``pa`` and one of ``pb``."""
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        orgs = [t.Organization(name=n, kind="university") for n in ("oa", "ob")]
        s.add_all(orgs)
        s.flush()
        pa, pb = (t.Project(name=n, organization_id=o.id) for n, o in zip(("pa", "pb"), orgs, strict=True))
        s.add_all([pa, pb])
        users = {
            "op": t.User(name="op", role="operator"),
            "ma": t.User(name="ma", role="member", organization_id=orgs[0].id),
            "ma2": t.User(name="ma2", role="member", organization_id=orgs[0].id),
            "mb": t.User(name="mb", role="member", organization_id=orgs[1].id),
        }
        s.add_all(users.values())
        s.flush()
        s.add_all([t.ProjectMember(project_id=pa.id, user_id=users[u].id) for u in ("ma", "ma2")])
        s.add(t.ProjectMember(project_id=pb.id, user_id=users["mb"].id))
        projects_of = {"op": frozenset[int](), "ma": frozenset({pa.id}), "ma2": frozenset({pa.id})}
        projects_of["mb"] = frozenset({pb.id})
        actors = {n: Actor(u.id, u.name, Role(u.role), u.organization_id, projects_of[n]) for n, u in users.items()}
    yield Store(sessions, actors)
    engine.dispose()


# (who, project, client key) per member; expected per member: "new" (created), "dup:i" (the job of member i,
# created False), "stored" (the job submitted before the batch, created False), "notfound"
# fmt: off
BATCHES: list[tuple[str, list[tuple[str, str, str | None]], list[str]]] = [
    ("distinct keys", [("op", "pa", "k1"), ("op", "pa", "k2"), ("ma", "pa", "k3")], ["new", "new", "new"]),
    ("no keys", [("op", "pa", None), ("op", "pa", None)], ["new", "new"]),
    ("same key twice", [("op", "pa", "k"), ("op", "pa", "k")], ["new", "dup:0"]),
    ("same key three times", [("ma", "pa", "k"), ("op", "pa", None), ("ma", "pa", "k"), ("ma", "pa", "k")],
     ["new", "new", "dup:0", "dup:0"]),
    ("same key, two projects", [("op", "pa", "k"), ("op", "pb", "k")], ["new", "new"]),
    ("same key, another user of the project", [("ma", "pa", "k"), ("ma2", "pa", "k")], ["new", "dup:0"]),
    ("key stored before the batch", [("op", "pa", "old"), ("op", "pa", "k")], ["stored", "new"]),
    ("key stored before, twice", [("op", "pa", "old"), ("ma", "pa", "old")], ["stored", "stored"]),
    ("another tenant's project", [("ma", "pa", "k1"), ("mb", "pa", "k2"), ("ma", "pa", "k3")],
     ["new", "notfound", "new"]),
    ("unknown project", [("op", "nope", "k1"), ("op", "pa", "k1")], ["notfound", "new"]),
    ("invisible project does not leak a stored key", [("mb", "pa", "old")], ["notfound"]),
]
# fmt: on


@pytest.mark.parametrize(("members", "expected"), [(m, e) for _n, m, e in BATCHES], ids=[n for n, _m, _e in BATCHES])
def test_one_batch(store: Store, members: list[tuple[str, str, str | None]], expected: list[str]) -> None:
    stored, _ = jobs.submit(store.sessions, store.actors["op"], "pa", SPEC, NOW, "old")
    batch = [store.sub(who, project, key) for who, project, key in members]
    out = commit_batch(store.sessions, batch)
    assert len(out) == len(batch)
    new_ids: list[int] = []
    for i, (want, got) in enumerate(zip(expected, out, strict=True)):
        if want == "notfound":
            assert isinstance(got, NotFound), (i, got)
            continue
        assert not isinstance(got, KfabricError), (i, got)
        row, created = got
        if want == "new":
            assert created and row.id not in new_ids and row.id != stored.id
            assert row.user_id == batch[i].actor.user_id and row.client_key == batch[i].client_key
            assert row.state == "pending" and row.attempt == 0 and row.placement is None
            new_ids.append(row.id)
        elif want == "stored":
            assert (row.id, created) == (stored.id, False)
        else:
            first = out[int(want.split(":")[1])]
            assert isinstance(first, tuple)
            assert (row.id, created) == (first[0].id, False)
    assert new_ids == sorted(new_ids), "jobs are numbered in queue order"
    assert store.count(t.Job) == 1 + len(new_ids)
    assert store.count(t.JobEvent) == 1 + len(new_ids)
    assert store.verify() == 1 + len(new_ids)
    with store.sessions() as s:
        logged = s.scalars(select(t.AuditEntry.object_id).order_by(t.AuditEntry.id)).all()
        for job_id in new_ids:  # what the API answers is what is stored
            row = s.get(t.Job, job_id)
            assert row is not None and row.state == "pending" and row.spec == SPEC
    assert logged == [str(stored.id), *map(str, new_ids)], "one audit entry per new job, in queue order"


def test_batches_chain_and_answers_match_the_store(store: Store) -> None:
    answers = []
    for k in range(5):
        batch = [store.sub("op", "pa", f"b{k}-{i}", name=f"j{k}-{i}") for i in range(k + 1)]
        answers += commit_batch(store.sessions, batch)
    assert store.verify() == 15
    with store.sessions() as s:
        for got in answers:
            assert isinstance(got, tuple)
            row = s.get(t.Job, got[0].id)
            assert row is not None
            for column in t.Job.__table__.columns:
                assert getattr(got[0], column.name) == getattr(row, column.name), column.name


def _ghost(store: Store) -> Actor:
    """An actor whose user row does not exist: its job insert fails in the store (foreign key)."""
    return Actor(10**9, "ghost", Role.OPERATOR)


# one member of a batch fails in the store; the batch is retried one by one and only that member fails
BAD_MEMBER: list[tuple[str, int, str | None, type[Exception]]] = [
    ("first, with a key", 0, "bad", Conflict),
    ("middle, with a key", 2, "bad", Conflict),
    ("last, without a key", 4, None, Exception),
]


@pytest.mark.parametrize(("at", "key", "error"), [b[1:] for b in BAD_MEMBER], ids=[b[0] for b in BAD_MEMBER])
def test_one_bad_member_fails_alone(store: Store, at: int, key: str | None, error: type[Exception]) -> None:
    subs = [store.sub("op", "pa", f"k{i}") for i in range(4)]
    subs.insert(at, Submission(_ghost(store), "pa", dict(SPEC), NOW, key))
    committer = GroupCommitter(jobs._submit_alone)
    committer._commit(store.sessions, subs)
    for i, sub in enumerate(subs):
        if i == at:
            with pytest.raises(error):
                sub.future.result(timeout=0)
        else:
            row, created = sub.future.result(timeout=0)
            assert created and row.client_key == sub.client_key
    assert store.count(t.Job) == 4
    assert store.verify() == 4


def test_queue_forms_batches_in_order(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the writer commits one batch, later submissions queue and commit together, in queue order."""
    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []
    real = submissions.commit_batch

    def slow_first(sessions: sessionmaker[Session], batch: list[Submission]) -> list[Any]:
        sizes.append(len(batch))
        if len(sizes) == 1:
            entered.set()
            assert release.wait(30)
        return real(sessions, batch)

    monkeypatch.setattr(submissions, "commit_batch", slow_first)
    committer = GroupCommitter(jobs._submit_alone)
    first = committer.enqueue(store.sessions, store.sub("op", "pa", "first"))
    assert entered.wait(30)
    keys = ["a", "b", "a", None, "c", "b"]
    queued: list[Future[tuple[t.Job, bool]]] = [
        committer.enqueue(store.sessions, store.sub("ma", "pa", k)) for k in keys
    ]
    release.set()
    row0, _ = first.result(timeout=30)
    results = [f.result(timeout=30) for f in queued]
    assert sizes == [1, len(keys)]
    ids = {k: r.id for k, (r, c) in zip(keys, results, strict=True) if c and k}
    assert [c for _r, c in results] == [True, True, False, True, True, False]
    assert results[2][0].id == ids["a"] and results[5][0].id == ids["b"]
    created = [r.id for r, c in results if c]
    assert [row0.id, *created] == sorted([row0.id, *created])
    with store.sessions() as s:
        logged = s.scalars(select(t.AuditEntry.object_id).order_by(t.AuditEntry.id)).all()
    assert logged == [str(i) for i in [row0.id, *created]]
    assert store.verify() == 5


def test_concurrent_submitters(store: Store) -> None:
    """Threads submitting at once, each key from two threads: one job per key, both callers get it, one event
    and one audit entry per job, and the chain verifies."""
    threads_n, per_thread = 8, 20
    answers: dict[str, set[int]] = {}
    created_n = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(k: int) -> None:
        nonlocal created_n
        try:
            for i in range(per_thread):
                key = f"k{(k // 2)}-{i}"  # threads 2m and 2m+1 submit the same keys
                row, created = jobs.submit(store.sessions, store.actors["ma"], "pa", SPEC, NOW, key)
                with lock:
                    answers.setdefault(key, set()).add(row.id)
                    created_n += created
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    keys = threads_n // 2 * per_thread
    assert len(answers) == keys and all(len(ids) == 1 for ids in answers.values())
    assert created_n == keys
    assert store.count(t.Job) == keys and store.count(t.JobEvent) == keys
    assert store.verify() == keys


class _WriterBug(BaseException):
    """Not an ``Exception``: escapes the batch's own error handling, as a bug in the writer would."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug ends its thread
def test_a_failing_writer_fails_its_batch_and_the_queue_goes_on(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = submissions.commit_batch
    calls: list[int] = []

    def first_fails(sessions: sessionmaker[Session], batch: list[Submission]) -> list[Any]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise _WriterBug
        return real(sessions, batch)

    monkeypatch.setattr(submissions, "commit_batch", first_fails)
    committer = GroupCommitter(jobs._submit_alone)
    doomed = committer.enqueue(store.sessions, store.sub("op", "pa", "a"))
    with pytest.raises(RuntimeError, match="writer failed"):
        doomed.result(timeout=30)
    _row, created = committer.enqueue(store.sessions, store.sub("op", "pa", "a")).result(timeout=30)
    assert created and store.count(t.Job) == 1 and store.verify() == 1


def test_the_batch_insert_names_every_job_column() -> None:
    """The batch writes jobs with its own SQL: a column added to ``jobs`` must be added there too."""
    assert sorted(submissions.JOB_COLUMNS) == sorted(c.name for c in t.Job.__table__.columns if c.name != "id")


@pytest.mark.parametrize(
    ("field", "pattern", "problem"),
    [
        ("output", "out-%q.log", "%q is not a known pattern"),
        ("error", "err-%", "a trailing % is not a known pattern"),
        ("output", "", "is empty"),
    ],
)
def test_an_output_pattern_kfabric_cannot_expand_is_refused_at_submit(
    store: Store, field: str, pattern: str, problem: str
) -> None:
    """``-o``/``-e`` are checked when the job is submitted, not when it starts (issue 19)."""
    with pytest.raises(KfabricError) as err:
        jobs.prepare(store.actors["ma"], "pa", {**SPEC, field: pattern}, NOW, None)
    assert err.value.where == f"job.{field}" and problem in str(err.value)
