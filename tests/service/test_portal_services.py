"""The portal's services (``service/portal_*.py``) against a real store (SQLite, and PostgreSQL where installed):
they return plain records, never the store's rows, and keep the API's tenancy (another tenant's object is not
found, a role that may not read something is refused)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass, is_dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import NotFound, PermissionDenied
from kfabric.scenarios.loader import load_scenario
from kfabric.service import (
    grants,
    jobs,
    portal_applications,
    portal_jobs,
    portal_operations,
    portal_programs,
    portal_usage,
    programs,
)
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
from kfabric.service.portal_records import ApplicationRecord, AuditRecord, JobRecord, ReviewRecord
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

NOW = 1_800_000_000.0
USERS = {  # name: (role, organization, member of)
    "op": ("operator", None, ()),
    "rev": ("reviewer", None, ()),
    "admin-uni": ("org-admin", "uni", ()),
    "admin-corp": ("org-admin", "corp", ()),
    "mem-uni": ("member", "uni", ("p-uni",)),
}
#: the packaged lab fleet: 32 H100 in pools every program may use
LAB = load_scenario("lab").fleet
SPEC = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0}


@dataclass(frozen=True)
class Window:
    """The rows a page shows (what ``kfabric.web.tables.Paging`` gives the services)."""

    total: int
    size: int = 2
    offset: int = 0


@dataclass
class World:
    sessions: sessionmaker[Session]
    actors: dict[str, Actor]
    uni_app: int
    corp_app: int
    grant: str
    job: int

    def __getitem__(self, name: str) -> Actor:
        return self.actors[name]


def _people(s: Session) -> None:
    orgs = {n: t.Organization(name=n, kind=k, flags=[]) for n, k in (("uni", "university"), ("corp", "enterprise"))}
    s.add_all(orgs.values())
    s.flush()
    projects = {p: t.Project(name=p, organization_id=orgs[o].id) for p, o in (("p-uni", "uni"), ("p-corp", "corp"))}
    s.add_all(projects.values())
    s.flush()
    for name, (role, org, member_of) in USERS.items():
        user = t.User(name=name, role=role, organization_id=orgs[org].id if org else None, owner="")
        s.add(user)
        s.flush()
        s.add_all(t.ProjectMember(project_id=projects[p].id, user_id=user.id) for p in member_of)


@pytest.fixture
def w(db_url: str) -> Iterator[World]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        _people(s)
    with sessions() as s:
        actors = {u.name: actor_for(s, u) for u in s.scalars(select(t.User)).all()}
    op = actors["op"]
    programs.create_program(sessions, op, "round", "a round", "msit", 1.0, {"min_reviews": 0}, NOW)
    uni = programs.apply(sessions, actors["admin-uni"], "round", "p-uni", "H100", 8, 6, "why", NOW).id
    corp = programs.apply(sessions, actors["admin-corp"], "round", "p-corp", "H100", 16, 6, "why", NOW).id
    programs.review(sessions, actors["rev"], uni, {"impact": 7.0}, "solid", NOW + 1)
    grant = grants.decide(sessions, op, corp, True, NOW + 2, "ok", reserved=False, credit_su_hours=100.0)
    assert grant is not None
    job, _ = jobs.submit(sessions, actors["mem-uni"], "p-uni", dict(SPEC), NOW + 3)
    yield World(sessions, actors, uni, corp, grant.name, job.id)
    engine.dispose()


def _plain(value: Any) -> bool:
    return is_dataclass(value) and not isinstance(value, t.Base)


# ---- applications and reviews --------------------------------------------------------------------------------


def test_tenants_see_their_own_applications_as_plain_records(w: World) -> None:
    rows, names = portal_applications.applications(w.sessions, w["admin-uni"])
    assert [(type(a), a.id, a.gpus) for a in rows] == [(ApplicationRecord, w.uni_app, 8)]
    assert names["project"][rows[0].project_id] == "p-uni"
    everyone, _names = portal_applications.applications(w.sessions, w["op"])
    assert [a.id for a in everyone] == [w.uni_app, w.corp_app]
    with pytest.raises(FrozenInstanceError):
        rows[0].gpus = 99


def test_another_tenants_application_is_not_found(w: World) -> None:
    with pytest.raises(NotFound):
        portal_applications.application_detail(w.sessions, w["admin-corp"], w.uni_app)
    mine = portal_applications.application_detail(w.sessions, w["admin-corp"], w.corp_app)
    assert (mine.app.status, mine.grant, mine.reviews) == ("approved", w.grant, [])


def test_a_reviewer_sees_their_review_and_its_context(w: World) -> None:
    work = portal_applications.review_work(w.sessions, w["rev"])
    assert [a.id for a in work.open_apps] == [w.uni_app]  # the decided one is no longer open
    mine = work.mine[w.uni_app]
    assert isinstance(mine, ReviewRecord) and (mine.scores, mine.weighted, mine.comment) == (
        {"impact": 7.0},
        7.0,
        "solid",
    )
    c = portal_applications.review_context(w.sessions, w["rev"], w.uni_app)
    assert (c.mine, c.review_count, c.conflict, c.program.name) == (mine, 1, None, "round")


# ---- programs, decisions and grants (operators) --------------------------------------------------------------


def test_the_program_page_ranks_the_open_call_and_lists_decisions(w: World) -> None:
    page = portal_programs.program_page(w.sessions, w["op"], LAB, "round", NOW + 10)
    assert page.room["H100"] == {"gpus": 32, "reserved": 0, "free": 32}  # the corp grant is credit only
    assert [
        (r.rank, r.app.id, r.reviews, r.mean, r.organization, r.free_before, r.free_after) for r in page.ranked
    ] == [(1, w.uni_app, 1, 7.0, "uni", 32, 24)]
    assert [(a.id, g) for a, g in page.done] == [(w.corp_app, w.grant)]
    assert all(_plain(x) for x in (page.program, page.ranked[0], page.ranked[0].app))


@pytest.mark.parametrize("who", ["rev", "admin-uni", "mem-uni"])
def test_program_pages_are_for_operators(w: World, who: str) -> None:
    with pytest.raises(PermissionDenied):
        portal_programs.program_overview(w.sessions, w[who], NOW)
    with pytest.raises(PermissionDenied):
        portal_programs.grant_rows(w.sessions, w[who], "", NOW, 86400.0)


def test_grant_rows_and_the_burn_down_follow_the_grant(w: World) -> None:
    rows = portal_programs.grant_rows(w.sessions, w["op"], "", NOW + 10, 86400.0)
    assert [(r.view["name"], r.utilization_pct, r.flagged_at_s) for r in rows] == [(w.grant, None, None)]
    assert portal_programs.grant_rows(w.sessions, w["op"], "flagged", NOW + 10, 86400.0) == []
    burn = portal_usage.grant_burn(w.sessions, w["admin-corp"], w.grant, NOW + 10)
    assert (burn.burn.credit_su_hours, burn.burn.left_su_hours, burn.burn.exhausted_at_s) == (100.0, 100.0, None)
    with pytest.raises(NotFound):
        portal_usage.grant_burn(w.sessions, w["admin-uni"], w.grant, NOW + 10)


# ---- jobs ------------------------------------------------------------------------------------------------------


def test_the_queue_is_the_api_s_tenancy_with_paging(w: World) -> None:
    rows, window, projects = portal_jobs.queue_page(w.sessions, w["mem-uni"], "active", "", Window)
    assert (window.total, projects) == (1, ["p-uni"])
    assert [(type(r.job), r.job.id, r.project, r.user) for r in rows] == [(JobRecord, w.job, "p-uni", "mem-uni")]
    nothing, window, projects = portal_jobs.queue_page(w.sessions, w["admin-corp"], "", "", Window)
    assert (nothing, window.total, projects) == ([], 0, ["p-corp"])
    nobody, _window, _projects = portal_jobs.queue_page(w.sessions, w["rev"], "", "", Window)
    assert nobody == []


def test_a_job_s_detail_is_read_only_by_those_who_see_it(w: World) -> None:
    d = portal_jobs.job_detail(w.sessions, w["mem-uni"], w.job, lambda _backend: False, 10)
    assert (d.job.state, d.project, d.user, d.may_cancel, d.final) == ("pending", "p-uni", "mem-uni", True, False)
    assert all(_plain(e) for e in d.events)
    assert d.output is not None and d.output.refused == ""
    other = portal_jobs.job_detail(w.sessions, w["admin-uni"], w.job, lambda _backend: False, 10)
    assert other.output is None  # an org-admin sees the job, not its output
    with pytest.raises(NotFound):
        portal_jobs.job_detail(w.sessions, w["admin-corp"], w.job, lambda _backend: False, 10)


def test_the_pending_queue_by_reason_is_for_operators(w: World) -> None:
    counts = portal_jobs.pending_reasons(w.sessions, w["op"])
    assert sum(n for _c, n in counts) == 1
    reason = counts[0][0]
    listed = portal_jobs.pending_with(w.sessions, w["op"], reason, Window(1))
    assert [(j.id, p, u) for j, p, u in listed] == [(w.job, "p-uni", "mem-uni")]
    with pytest.raises(PermissionDenied):
        portal_jobs.pending_reasons(w.sessions, w["admin-uni"])


# ---- the audit log ---------------------------------------------------------------------------------------------


def test_org_admins_read_their_organization_s_audit_entries(w: World) -> None:
    every = portal_operations.audit_page(w.sessions, w["op"], portal_operations.AuditFilter(), lambda n: Window(n, 100))
    assert every.head is not None and every.head["entries"] == every.paging.total == len(every.rows)
    uni = portal_operations.audit_page(w.sessions, w["admin-uni"], portal_operations.AuditFilter(),
                                       lambda n: Window(n, 100))  # fmt: skip
    assert uni.head is None and 0 < len(uni.rows) < len(every.rows)
    assert {type(e) for e in uni.rows} == {AuditRecord}
    with w.sessions() as s:
        uni_id = s.scalars(select(t.Organization.id).where(t.Organization.name == "uni")).one()
    assert {e.organization_id for e in uni.rows} == {uni_id}
    submits = portal_operations.AuditFilter(action="application.submit")
    assert [e.object_id for e in portal_operations.audit_page(w.sessions, w["op"], submits, Window).rows] == [
        str(w.corp_app),
        str(w.uni_app),
    ]  # newest first
    with pytest.raises(PermissionDenied):
        portal_operations.audit_page(w.sessions, w["mem-uni"], portal_operations.AuditFilter(), Window)


def test_the_audit_chain_verifies_for_operators_only(w: World) -> None:
    verified = portal_operations.verify(w.sessions, w["op"])
    assert verified["ok"] is True and verified["entries"] > 0
    with pytest.raises(PermissionDenied):
        portal_operations.verify(w.sessions, w["admin-uni"])
