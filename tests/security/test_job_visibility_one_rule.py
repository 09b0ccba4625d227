"""Who sees which jobs is one rule (``kfabric.service.job_visibility``), and every way to look at jobs answers by
it: the API's list (``GET /v1/jobs``), its accounting (``GET /v1/acct``, sacct), one job (``GET /v1/jobs/{id}``),
the portal's queue (its data, ``portal_jobs.queue_page``, and the ``/jobs`` page itself) and a job's portal
page. For every kind of caller the test compares each answer with the product's rule written out here (docs:
operators see every job; an org-admin its organization's projects' jobs; a member its projects' jobs; nobody
else any job)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from api_world import DAY, NOW, PROJECT_OF, World, as_
from sqlalchemy import select

from kfabric.service import auth, portal_jobs
from kfabric.store import tables as t

ALL_STATES = ["pending", "admitted", "running", "preempted", "succeeded", "failed", "cancelled", "timeout"]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
JOB_LINK = re.compile(r'href="/jobs/(\d+)"')
A, B, A2 = PROJECT_OF["snu-vision"], PROJECT_OF["tinyml"], "vision-b"  # A2: a second project of A's organization


@dataclass(frozen=True)
class AllRows:
    """A portal page window holding every row (the queue's data compared whole)."""

    size: int
    offset: int = 0


@dataclass(frozen=True)
class Caller:
    kind: str
    token_of: str  # a key of the world's tokens, or of the users this test adds
    projects: frozenset[str] | None  # the projects whose jobs the rule lets it see (None: every project)
    portal: bool = True  # whether the portal offers it a queue page


CALLERS = [
    Caller("operator", "operator", None),
    Caller("member of project A", "snu-vision/member", frozenset({A})),
    Caller("member of project A2 only (same organization as A)", "a2-member", frozenset({A2})),
    Caller("member of project B (another tenant)", "tinyml/member", frozenset({B})),
    Caller("member with no project", "no-project", frozenset()),
    Caller("org-admin of A's organization", "snu-vision/org-admin", frozenset({A, A2})),
    Caller("org-admin of another tenant", "tinyml/org-admin", frozenset({B})),
    Caller("reviewer", "reviewer", frozenset(), portal=False),
    Caller("provider", "provider", frozenset(), portal=False),
]


@pytest.fixture
def tokens(world: World) -> dict[str, str]:
    """The world's tokens plus a member of a second snu-vision project (with a job there) and a snu-vision member of
    no project."""
    api = world.api
    r = api.post("/v1/projects", api.operator, {"name": A2, "organization": "snu-vision"})
    assert r.status_code == 201, r.text
    out = dict(world.tokens)
    out["a2-member"] = world.create_user("a2-member", "member", "snu-vision", (A2,))
    out["no-project"] = world.create_user("no-project", "member", "snu-vision")
    grant = {"name": "g-a2", "program": "lab-grants", "project": A2, "start_s": NOW, "end_s": NOW + 30 * DAY,
             "credit_su_hours": 100}  # fmt: skip
    r = api.post("/v1/grants", api.operator, grant)
    assert r.status_code == 201, r.text
    r = api.post("/v1/jobs", out["a2-member"], {"project": A2, "time_limit_s": 3600.0, "name": "a2-job"})
    assert r.status_code == 201, r.text
    return out


def _jobs_by_project(world: World) -> dict[int, str]:
    with world.api.rt.sessions() as s:
        rows = s.execute(select(t.Job.id, t.Project.name).join(t.Project, t.Project.id == t.Job.project_id)).all()
    return {job_id: project for job_id, project in rows}


def _sign_in(world: World, token: str) -> None:
    c = world.api.client
    c.cookies.clear()
    page = c.get("/signin")
    found = CSRF.search(page.text)
    assert found, page.text
    r = c.post("/signin", data={"csrf": found.group(1), "token": token, "next": "/jobs"}, follow_redirects=False)
    assert r.status_code == 303, r.text


@pytest.mark.parametrize("caller", CALLERS, ids=[c.kind for c in CALLERS])
def test_every_job_view_answers_the_same_set(world: World, tokens: dict[str, str], caller: Caller) -> None:
    api, token = world.api, tokens[caller.token_of]
    jobs = _jobs_by_project(world)
    assert {A, A2, B} <= set(jobs.values())  # every project holds a job: each rule has something to hide
    expected = {j for j, p in jobs.items() if caller.projects is None or p in caller.projects}
    assert caller.projects == frozenset() or expected  # the callers that see jobs see some

    listed = api.get("/v1/jobs", token, params={"state": ALL_STATES, "limit": 10_000})
    assert listed.status_code == 200, listed.text
    assert {j["id"] for j in listed.json()} == expected

    acct = api.get("/v1/acct", token)  # sacct: the same rule; a role that runs no jobs is refused outright
    if caller.portal:
        assert acct.status_code == 200, acct.text
        assert {row["id"] for row in acct.json()} == expected
    else:
        assert acct.status_code == 403 and acct.json()["error"]["code"] == "forbidden"

    shown = {j for j in jobs if api.get(f"/v1/jobs/{j}", token).status_code == 200}
    assert shown == expected
    for j in set(jobs) - expected:  # the same answer as for a job that does not exist
        hidden, missing = api.get(f"/v1/jobs/{j}", token).json(), api.get("/v1/jobs/999999", token).json()
        assert hidden["error"]["code"] == missing["error"]["code"] == "not_found"
        assert hidden["error"]["fix"] == missing["error"]["fix"]

    with api.rt.sessions() as s:
        actor = auth.authenticate(s, token, api.clock.now)
    rows, _, choices = portal_jobs.queue_page(api.rt.sessions, actor, "", "", lambda n: AllRows(max(n, 1)))
    assert {r.job.id for r in rows} == expected
    with api.rt.sessions() as s:
        every_project = set(s.scalars(select(t.Project.name)))
    assert set(choices) == (every_project if caller.projects is None else caller.projects)

    if caller.portal:
        _sign_in(world, token)
        page = api.client.get("/jobs")
        assert page.status_code == 200
        assert {int(j) for j in JOB_LINK.findall(page.text)} == expected
        assert {j for j in jobs if api.client.get(f"/jobs/{j}").status_code == 200} == expected
        api.client.cookies.clear()


def test_a_project_filter_never_widens_the_rule(world: World, tokens: dict[str, str]) -> None:
    """Asking for another tenant's project by name lists nothing, in the API and in the portal's data."""
    api, token = world.api, tokens["snu-vision/member"]
    r = api.get("/v1/jobs", token, params={"project": B, "state": ALL_STATES})
    assert r.status_code == 200 and r.json() == []
    with api.rt.sessions() as s:
        actor = auth.authenticate(s, token, api.clock.now)
    rows, _, _ = portal_jobs.queue_page(api.rt.sessions, actor, "", B, lambda n: AllRows(max(n, 1)))
    assert rows == []
    assert api.client.get("/v1/jobs", headers=as_("kf_not-a-token")).status_code == 401
