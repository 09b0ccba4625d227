"""The tenant-isolation matrix: every role × every object × every verb, against the HTTP API on both stores.

The objects are owned by snu-vision (a job submitted by its member, an application by its org-admin, its grant,
usage, audit entries, project and organization). "org-admin", "member" and "colleague" (a second member of the
same project) belong to snu-vision; "other-org-admin" and "other-org-member" to tinyml. A list's expectation is
whose objects it may hold: ALL (both tenants'), OWN (exactly the caller's organization's), NONE, or a set of
organizations. Other answers are HTTP statuses. Rules checked beside the table, on every row: a refused request
writes nothing (row counts and the audit chain are unchanged), an accepted mutation is audited, and the error
body names the error (``not_found``, ``forbidden``, ``unauthenticated``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_world import DAY, NOW, SCORES, World, unique
from sqlalchemy import select

from kfabric.store import tables as t

ALL, OWN, NONE = "all", "own", "none"
Expect = int | str | frozenset[str]

# ---- who is calling ----------------------------------------------------------------------------------------------

ROLES: dict[str, tuple[str, str | None]] = {  # matrix role: (world role, organization)
    "operator": ("operator", None),
    "reviewer": ("reviewer", None),
    "provider": ("provider", None),
    "org-admin": ("org-admin", "snu-vision"),
    "member": ("member", "snu-vision"),
    "colleague": ("member2", "snu-vision"),
    "other-org-admin": ("org-admin", "tinyml"),
    "other-org-member": ("member", "tinyml"),
}
GARBAGE = "kf_not-a-token-anyone-was-given"
UNAUTHENTICATED = {"anonymous": None, "garbage-token": GARBAGE}

# ---- the table: (object, verb) -> role -> expectation -------------------------------------------------------------
# columns:        operator reviewer provider org-admin member colleague other-org-admin other-org-member
COLUMNS = tuple(ROLES)
TABLE: dict[tuple[str, str], tuple[Expect, ...]] = {
    ("job", "list"):                (ALL, NONE, NONE, OWN, OWN, OWN, OWN, OWN),
    ("job", "get"):                 (200, 404, 404, 200, 200, 200, 404, 404),
    ("job", "events"):              (200, 404, 404, 200, 200, 200, 404, 404),
    ("job", "create"):              (201, 403, 403, 201, 201, 201, 404, 404),
    ("job", "cancel"):              (200, 404, 404, 200, 200, 403, 404, 404),
    ("application", "list"):        (ALL, ALL, NONE, OWN, OWN, OWN, OWN, OWN),
    ("application", "get"):         (200, 200, 404, 200, 200, 200, 404, 404),
    ("application", "create"):      (201, 403, 403, 201, 403, 403, 404, 403),
    ("application", "review"):      (201, 201, 403, 403, 403, 403, 403, 403),
    ("application", "decide"):      (200, 403, 403, 403, 403, 403, 403, 403),
    ("grant", "list"):              (ALL, NONE, NONE, OWN, OWN, OWN, OWN, OWN),
    ("grant", "create"):            (201, 403, 403, 403, 403, 403, 403, 403),
    ("usage", "list"):              (ALL, 403, frozenset({"tinyml"}), OWN, OWN, OWN, OWN, OWN),
    ("audit", "list"):              (ALL, 403, 403, OWN, 403, 403, OWN, 403),
    ("audit", "verify"):            (200, 403, 403, 403, 403, 403, 403, 403),
    ("project", "list"):            (ALL, ALL, NONE, OWN, OWN, OWN, OWN, OWN),
    ("project", "create"):          (201, 403, 404, 201, 403, 403, 404, 404),
    ("organization", "list"):       (ALL, ALL, NONE, OWN, OWN, OWN, OWN, OWN),
    ("organization", "create"):     (201, 403, 403, 403, 403, 403, 403, 403),
    ("user", "create-member"):      (201, 403, 404, 201, 403, 403, 404, 404),
    ("user", "create-org-admin"):   (201, 403, 404, 403, 403, 403, 404, 404),
    ("user", "create-operator"):    (201, 403, 403, 403, 403, 403, 403, 403),
    ("program", "list"):            (200, 200, 200, 200, 200, 200, 200, 200),
    ("program", "create"):          (201, 403, 403, 403, 403, 403, 403, 403),
}  # fmt: skip

CASES = [
    pytest.param(role, obj, verb, expect, id=f"{obj}-{verb}-{role}")
    for (obj, verb), row in TABLE.items()
    for role, expect in zip(COLUMNS, row, strict=True)
] + [pytest.param(role, obj, verb, 401, id=f"{obj}-{verb}-{role}") for (obj, verb) in TABLE for role in UNAUTHENTICATED]

# ---- the verbs ---------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    response: httpx.Response
    orgs: set[str] | None = None  # for a list: the organizations whose objects it holds
    target: Callable[[], Any] | None = None  # for a mutation of an existing object: its state now
    before: tuple[int, ...] | None = None  # row counts once that object was made, just before the request


def _project_orgs(w: World) -> dict[str, str]:
    return {p["name"]: p["organization"] for p in w.api.get("/v1/projects", w.api.operator).json()}


def _list(w: World, token: str | None, path: str, org_of: Callable[[World, dict[str, Any]], str], **kw: Any) -> Outcome:
    r = w.api.get(path, token, **kw)
    orgs = {org_of(w, item) for item in r.json()} if r.status_code == 200 else None
    return Outcome(r, orgs)


def _audit_orgs(w: World, entries: list[dict[str, Any]]) -> set[str]:
    """The organization each entry is filed under, read from the store ('(none)' for global entries)."""
    with w.api.rt.sessions() as s:
        ids = [e["id"] for e in entries]
        names = dict(s.execute(select(t.Organization.id, t.Organization.name)).all())
        rows = s.execute(select(t.AuditEntry.id, t.AuditEntry.organization_id).where(t.AuditEntry.id.in_(ids)))
        return {names.get(org_id, "(none)") if org_id is not None else "(none)" for _id, org_id in rows}


def list_jobs(w: World, tok: str | None) -> Outcome:
    projects = _project_orgs(w)
    return _list(w, tok, "/v1/jobs", lambda _w, j: projects[j["project"]])


def list_grants(w: World, tok: str | None) -> Outcome:
    projects = _project_orgs(w)
    return _list(w, tok, "/v1/grants", lambda _w, g: projects[g["project"]])


def list_audit(w: World, tok: str | None) -> Outcome:
    r = w.api.get("/v1/audit", tok, params={"limit": 10_000})
    return Outcome(r, _audit_orgs(w, r.json()) if r.status_code == 200 else None)


def cancel_job(w: World, tok: str | None) -> Outcome:
    job = w.snu_job()
    before = w.api.writes()
    return Outcome(w.api.post(f"/v1/jobs/{job}/cancel", tok), target=lambda: w.api.job_state(job), before=before)


def review_application(w: World, tok: str | None) -> Outcome:
    app = w.snu_application()
    before = w.api.writes()
    r = w.api.post(f"/v1/applications/{app}/reviews", tok, {"scores": SCORES, "comment": "solid"})
    return Outcome(r, target=lambda: w.api.application_status(app), before=before)


def decide_application(w: World, tok: str | None) -> Outcome:
    app = w.snu_application()
    review = w.api.post(f"/v1/applications/{app}/reviews", w.token("reviewer"), {"scores": SCORES})
    assert review.status_code == 201, review.text  # the program decides after one review (rule min_reviews)
    body = {"approve": True, "note": "ok", "reserved": False, "credit_su_hours": 10.0}
    before = w.api.writes()
    r = w.api.post(f"/v1/applications/{app}/decision", tok, body)
    return Outcome(r, target=lambda: w.api.application_status(app), before=before)


def create_user(role: str) -> Callable[[World, str | None], Outcome]:
    def run(w: World, tok: str | None) -> Outcome:
        tenant = role in ("member", "org-admin")
        body: dict[str, Any] = {"name": unique(f"new-{role}"), "role": role}
        if tenant:
            body |= {"organization": "snu-vision", "projects": ["vision-lab"] if role == "member" else []}
        return Outcome(w.api.post("/v1/users", tok, body))

    return run


def post(path: str, body: Callable[[World], dict[str, Any]]) -> Callable[[World, str | None], Outcome]:
    return lambda w, tok: Outcome(w.api.post(path, tok, body(w)))


def get(path: Callable[[World], str]) -> Callable[[World, str | None], Outcome]:
    return lambda w, tok: Outcome(w.api.get(path(w), tok))


APPLICATION = {"program": "lab-grants", "project": "vision-lab", "gpu_model_class": "H100", "gpus": 2, "months": 3,
               "justification": "vision models"}  # fmt: skip
GRANT = {"program": "lab-grants", "project": "vision-lab", "start_s": NOW, "end_s": NOW + 9 * DAY, "credit_su_hours": 1}
SNU_JOB = lambda w: f"/v1/jobs/{w.jobs['snu-vision']}"  # noqa: E731
SNU_APP = lambda w: f"/v1/applications/{w.applications['snu-vision']}"  # noqa: E731

VERBS: dict[tuple[str, str], Callable[[World, str | None], Outcome]] = {
    ("job", "list"): list_jobs,
    ("job", "get"): get(SNU_JOB),
    ("job", "events"): get(lambda w: SNU_JOB(w) + "/events"),
    ("job", "create"): post("/v1/jobs", lambda _w: {"project": "vision-lab", "time_limit_s": 600, "name": "x"}),
    ("job", "cancel"): cancel_job,
    ("application", "list"): lambda w, tok: _list(w, tok, "/v1/applications", lambda _w, a: a["organization"]),
    ("application", "get"): get(SNU_APP),
    ("application", "create"): post("/v1/applications", lambda _w: dict(APPLICATION)),
    ("application", "review"): review_application,
    ("application", "decide"): decide_application,
    ("grant", "list"): list_grants,
    ("grant", "create"): post("/v1/grants", lambda _w: GRANT | {"name": unique("grant")}),
    ("usage", "list"): lambda w, tok: _list(
        w, tok, "/v1/usage", lambda _w, u: u["organization"], params={"by": "organization"}
    ),
    ("audit", "list"): list_audit,
    ("audit", "verify"): get(lambda _w: "/v1/audit/verify"),
    ("project", "list"): lambda w, tok: _list(w, tok, "/v1/projects", lambda _w, p: p["organization"]),
    ("project", "create"): post("/v1/projects", lambda _w: {"name": unique("proj"), "organization": "snu-vision"}),
    ("organization", "list"): lambda w, tok: _list(w, tok, "/v1/organizations", lambda _w, o: o["name"]),
    ("organization", "create"): post("/v1/organizations", lambda _w: {"name": unique("org"), "kind": "startup"}),
    ("user", "create-member"): create_user("member"),
    ("user", "create-org-admin"): create_user("org-admin"),
    ("user", "create-operator"): create_user("operator"),
    ("program", "list"): get(lambda _w: "/v1/programs"),
    ("program", "create"): post("/v1/programs", lambda _w: {"name": unique("prog"), "description": "d"}),
}

ERROR_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}


def _token(w: World, role: str) -> str | None:
    if role in UNAUTHENTICATED:
        return UNAUTHENTICATED[role]
    world_role, org = ROLES[role]
    return w.token(world_role, org)


def test_table_is_complete() -> None:
    assert set(TABLE) == set(VERBS)
    objects = {obj for obj, _verb in TABLE}
    assert objects >= {"job", "application", "grant", "usage", "audit", "project", "organization", "user"}


@pytest.mark.parametrize(("role", "obj", "verb", "expect"), CASES)
def test_isolation(shared_world: World, role: str, obj: str, verb: str, expect: Expect) -> None:
    w = shared_world
    api = w.api
    token = _token(w, role)
    run = VERBS[(obj, verb)]

    before = api.writes()
    outcome = run(w, token)  # a mutation of an existing object makes a fresh target first (and snapshots after)
    before = outcome.before or before
    r = outcome.response
    status = expect if isinstance(expect, int) else 200
    assert r.status_code == status, f"{role} {verb} {obj}: {r.status_code} {r.text}"

    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] == ERROR_CODES[r.status_code], r.text
        if r.status_code == 401:
            assert r.headers.get("www-authenticate") == "Bearer"
        assert api.writes() == before, "a refused request wrote something"
        if outcome.target is not None:  # the target is untouched
            assert outcome.target() in (("pending", False), ("submitted", 0), ("submitted", 1))
    elif verb not in ("list", "get", "events", "verify"):  # an accepted mutation is audited
        assert api.writes()[2] > before[2]
        if outcome.target is not None:
            state = outcome.target()
            expected_state = {"cancel": ("cancelled", False), "review": ("submitted", 1), "decide": ("approved", 1)}
            assert state == expected_state[verb]

    if outcome.orgs is None:
        return
    seen = outcome.orgs
    if expect == ALL:
        assert {"snu-vision", "tinyml"} <= seen
    elif expect == OWN:
        own = ROLES[role][1]
        assert seen == {own}, f"{role} lists objects of {sorted(seen)}; only {own}'s may be listed"
    elif expect == NONE:
        assert seen == set(), f"{role} lists objects of {sorted(seen)}"
    elif isinstance(expect, frozenset):
        assert seen == set(expect)


# ---- beside the table ---------------------------------------------------------------------------------------------


def test_filters_do_not_reach_other_tenants(shared_world: World) -> None:
    """Filtering by another tenant's project (or a state) lists nothing of theirs."""
    w = shared_world
    for role in ("org-admin", "member"):
        token = w.token(role, "snu-vision")
        assert w.api.get("/v1/jobs", token, params={"project": "tinyml-llm"}).json() == []
        listed = w.api.get("/v1/jobs", token, params={"state": ["pending", "succeeded"]}).json()
        assert listed and {j["project"] for j in listed} == {"vision-lab"}
        usage = w.api.get("/v1/usage", token, params={"by": "project"}).json()
        assert [u["project"] for u in usage] == ["vision-lab"]
    provider = w.api.get("/v1/usage", w.token("provider"), params={"by": "provider"}).json()
    assert [u["provider"] for u in provider] == ["acme"]


def test_preemption_tells_the_victim_nothing_of_the_other_tenant(world: World) -> None:
    api = world.api
    victim, other = world.token("member", "tinyml"), world.token("member", "snu-vision")
    for org in ("snu-vision", "tinyml"):  # a quiet fleet
        assert api.post(f"/v1/jobs/{world.jobs[org]}/cancel", api.operator).status_code == 200
    # tinyml borrows all 32 H100 (snu-vision's 8 reserved among them); snu-vision's job then reclaims them
    big = world.submit(victim, "tinyml-llm", gpus=32, gpu_models=["H100"], priority="low",
                       runtime_estimate_s=10**5, time_limit_s=2 * 10**5)  # fmt: skip
    api.tick(30.0, times=3)
    assert api.get(f"/v1/jobs/{big}", victim).json()["state"] == "running"
    reclaimer = world.submit(other, "vision-lab", gpus=8, gpu_models=["H100"])
    for _ in range(40):  # reclaim waits a while (policy), then the controller stops the borrower
        api.tick(30.0)
        events = api.get(f"/v1/jobs/{big}/events", victim).json()
        if any(e["to_state"] == "preempted" for e in events):
            break
    else:
        raise AssertionError(f"no reclaim: {api.get(f'/v1/jobs/{reclaimer}', other).json()['reason']}")
    seen = [api.get(f"/v1/jobs/{big}", victim).json()["reason"], *(e["reason"] for e in events)]
    assert not any(f"job {reclaimer}" in text for text in seen), seen
    audit = api.get("/v1/audit", world.token("org-admin", "tinyml"), params={"limit": 10_000}).json()
    assert any(e["action"] == "job.preempt" and e["object_id"] == str(big) for e in audit)
