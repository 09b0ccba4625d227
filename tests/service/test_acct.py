"""Per-job accounting (``service/acct.py``, like sacct) on SQLite and PostgreSQL: sacct's window, who sees which
jobs, and GPU-hours / SU / charge that are the sums of each job's usage records."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service import acct
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

T = 1_800_000_000.0
H = 3600.0
NOW = T + 100 * H

# name: project, user, state, submitted (h after T), started, ended, exit code, usage records (h0, h1, GPUs,
# SU weight, price factor), nodes
JOBS = {
    "early": ("p-uni", "alice", "succeeded", 0, 1, 3, 0, [(1, 3, 8, 1.0, 0.5)], [0, 1]),
    "late": ("p-uni", "bob", "failed", 10, 11, 12, 2, [(11, 12, 4, 2.0, 1.0)], [1]),
    "running": ("p-uni", "alice", "running", 5, 6, None, None, [(6, 8, 2, 1.0, 1.0), (8, 9, 2, 1.0, 1.0)], [2]),
    "waiting": ("p-corp", "carol", "pending", 20, None, None, None, [], []),
    "never": ("p-corp", "carol", "cancelled", 2, None, 2.5, None, [], []),
}
PROJECTS = {"p-uni": "uni", "p-corp": "corp"}
USERS = {  # name: role, organization, projects
    "op": ("operator", None, ()),
    "rev": ("reviewer", None, ()),
    "admin-uni": ("org-admin", "uni", ()),
    "alice": ("member", "uni", ("p-uni",)),
    "bob": ("member", "uni", ("p-uni",)),
    "carol": ("member", "corp", ("p-corp",)),
}
NODES = ["gpu1", "gpu2", "gpu3"]


@dataclass
class World:
    sessions: sessionmaker[Session]
    actors: dict[str, Actor]
    ids: dict[str, int]

    def acct(self, who: str, **kw: object) -> dict[str, dict[str, object]]:
        with self.sessions() as s:
            rows = acct.job_accounting(s, self.actors[who], NOW, node_names=NODES, **kw)  # type: ignore[arg-type]
        return {str(r["name"]): r for r in rows}


@pytest.fixture
def w(db_url: str) -> Iterator[World]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    ids: dict[str, int] = {}
    with sessions.begin() as s:
        orgs = {n: t.Organization(name=n, kind=k) for n, k in (("uni", "university"), ("corp", "enterprise"))}
        s.add_all(orgs.values())
        s.flush()
        projects = {p: t.Project(name=p, organization_id=orgs[o].id) for p, o in PROJECTS.items()}
        s.add_all(projects.values())
        s.flush()
        users = {}
        for name, (role, org, member_of) in USERS.items():
            users[name] = user = t.User(name=name, role=role, organization_id=orgs[org].id if org else None)
            s.add(user)
            s.flush()
            s.add_all(t.ProjectMember(project_id=projects[p].id, user_id=user.id) for p in member_of)
        for name, (project, user, state, sub, start, end, code, records, nodes) in JOBS.items():
            p = projects[project]
            job = t.Job(
                project_id=p.id, user_id=users[user].id, name=name, state=state, submitted_at_s=T + sub * H,
                started_at_s=None if start is None else T + start * H, ended_at_s=None if end is None else T + end * H,
                exit_code=code, spec={"gpus": 8, "time_limit_s": 86_400.0},
                placement={"pool": "p", "shares": [[n, [0], 1000, 0, 0] for n in nodes]} if nodes else None,
            )  # fmt: skip
            s.add(job)
            s.flush()
            ids[name] = job.id
            for h0, h1, gpus, su_w, price in records:
                gpu_s = gpus * (h1 - h0) * H
                s.add(t.UsageRecord(
                    job_id=job.id, project_id=p.id, organization_id=p.organization_id, program_id=None,
                    grant_id=None, site="s1", provider="nhn", gpu_model="H100", start_s=T + h0 * H, end_s=T + h1 * H,
                    gpu_s=gpu_s, su=gpu_s * su_w, price_factor=price, charged_su=gpu_s * su_w * price,
                ))  # fmt: skip
    with sessions() as s:
        actors = {u.name: actor_for(s, u) for u in s.scalars(select(t.User)).all()}
    yield World(sessions, actors, ids)
    engine.dispose()


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ((None, None), {"early", "late", "running", "waiting", "never"}),
        # ended before the window starts: out; not yet submitted when it ends: out
        ((4, 15), {"late", "running"}),
        ((0, 2.2), {"early", "never"}),  # "never" was eligible from 2 h (ended at 2.5 h without running)
        ((12, None), {"late", "running", "waiting"}),  # ended exactly at the start: still in (ended >= start)
        ((None, 10), {"early", "running", "never"}),  # submitted exactly at the end: out (the end is exclusive)
    ],
    ids=["everything", "middle", "first-hours", "open-end", "open-start"],
)
def test_window_is_sacct_s(w: World, window: tuple[float | None, float | None], expected: set[str]) -> None:
    lo, hi = window
    got = w.acct("op", start_s=None if lo is None else T + lo * H, end_s=None if hi is None else T + hi * H)
    assert set(got) == expected


def test_usage_sums_per_job(w: World) -> None:
    got = w.acct("op")
    early, late, running, waiting = got["early"], got["late"], got["running"], got["waiting"]
    assert (early["gpu_hours"], early["su_hours"], early["charged_su_hours"]) == pytest.approx((16, 16, 8))
    assert (late["gpu_hours"], late["su_hours"], late["charged_su_hours"]) == pytest.approx((4, 8, 8))
    assert (running["gpu_hours"], running["su_hours"]) == pytest.approx((6, 6))  # two records summed
    assert (waiting["gpu_hours"], waiting["su_hours"], waiting["charged_su_hours"]) == (0, 0, 0)
    assert early["elapsed_s"] == pytest.approx(2 * H) and running["elapsed_s"] == pytest.approx(NOW - (T + 6 * H))
    assert waiting["elapsed_s"] == 0 and got["never"]["elapsed_s"] == 0
    assert early["nodes"] == ["gpu1", "gpu2"] and (early["exit_code"], late["exit_code"]) == (0, 2)
    with w.sessions() as s:  # the totals are the usage records' totals
        records = s.scalars(select(t.UsageRecord)).all()
    assert sum(r["gpu_hours"] for r in got.values()) == pytest.approx(sum(r.gpu_s for r in records) / H)
    assert sum(r["charged_su_hours"] for r in got.values()) == pytest.approx(sum(r.charged_su for r in records) / H)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("op", {"early", "late", "running", "waiting", "never"}),
        ("admin-uni", {"early", "late", "running"}),
        ("alice", {"early", "late", "running"}),  # members see their projects' jobs, as in kfabric queue
        ("carol", {"waiting", "never"}),
    ],
)
def test_tenants_see_only_theirs(w: World, who: str, expected: set[str]) -> None:
    assert set(w.acct(who)) == expected


def test_filters_and_errors(w: World) -> None:
    assert set(w.acct("op", users=["alice"])) == {"early", "running"}
    assert set(w.acct("op", project="p-corp")) == {"waiting", "never"}
    assert set(w.acct("op", states=["failed", "cancelled"])) == {"late", "never"}
    assert set(w.acct("alice", project="p-corp")) == set()  # another tenant's project: nothing, not an error
    with pytest.raises(PermissionDenied, match="reviewer role"):
        w.acct("rev")
    with pytest.raises(ValidationError, match="not before its end"):
        w.acct("op", start_s=T + H, end_s=T)
    with w.sessions() as s:
        rows = acct.job_accounting(s, w.actors["op"], NOW, node_names=NODES)
    parsed = list(csv.DictReader(io.StringIO(acct.acct_csv(rows))))
    assert [r["name"] for r in parsed] == [str(r["name"]) for r in rows]
    assert parsed[0]["nodes"] == "gpu1 gpu2" and float(parsed[0]["gpu_hours"]) == pytest.approx(16)
