"""Bad requests get the right status and an error body whose ``where`` names the offending field, and write
nothing; idempotent submission; the audit chain verifies after a burst of mutations and names a tampered entry."""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from api_world import DAY, NOW, SCORES, Api, World, as_, unique
from sqlalchemy import delete, func, select, text

from kfabric.store import tables as t

JOB = {"project": "vision-lab", "time_limit_s": 600.0}
APPLICATION = {"program": "lab-grants", "project": "vision-lab", "gpu_model_class": "H100", "gpus": 2, "months": 3,
               "justification": "vision models"}  # fmt: skip
GRANT = {"program": "lab-grants", "project": "vision-lab", "start_s": NOW, "end_s": NOW + 30 * DAY}
CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
         422: "invalid"}  # fmt: skip

# (id, caller, method, path, body, status, where): the path may name {done} (a finished job of snu-vision),
# {app} (a submitted application of snu-vision); ``where`` must equal the answer's (a str) or end with it
# after a dot ("gpu_milli" matches "job.gpu_milli"). Callers: "member" (of snu-vision), "admin" (its org-admin),
# "operator".
BAD: list[tuple[str, str, str, str, Any, int, str]] = [
    # jobs: the schema
    ("job-missing-time-limit", "member", "POST", "/v1/jobs", {"project": "vision-lab"}, 422, "time_limit_s"),
    ("job-zero-time-limit", "member", "POST", "/v1/jobs", JOB | {"time_limit_s": 0}, 422, "time_limit_s"),
    ("job-negative-gpus", "member", "POST", "/v1/jobs", JOB | {"gpus": -1}, 422, "gpus"),
    ("job-gpus-not-integer", "member", "POST", "/v1/jobs", JOB | {"gpus": 1.5}, 422, "gpus"),
    ("job-gpus-boolean", "member", "POST", "/v1/jobs", JOB | {"gpus": True}, 422, "gpus"),
    ("job-gpus-string", "member", "POST", "/v1/jobs", JOB | {"gpus": "8"}, 422, "gpus"),
    ("job-gpus-huge", "member", "POST", "/v1/jobs", JOB | {"gpus": 10**12}, 422, "gpus"),
    ("job-gpu-milli-over-1000", "member", "POST", "/v1/jobs", JOB | {"gpu_milli": 1500}, 422, "gpu_milli"),
    ("job-gpu-milli-zero", "member", "POST", "/v1/jobs", JOB | {"gpu_milli": 0}, 422, "gpu_milli"),
    ("job-unknown-field", "member", "POST", "/v1/jobs", JOB | {"walltime": 5}, 422, "walltime"),
    ("job-nul-in-name", "member", "POST", "/v1/jobs", JOB | {"name": "a\x00b"}, 422, "name"),
    ("job-nul-in-command", "member", "POST", "/v1/jobs", JOB | {"command": "ls\x00"}, 422, "command"),
    ("job-name-too-long", "member", "POST", "/v1/jobs", JOB | {"name": "x" * 201}, 422, "name"),
    ("job-env-not-string", "member", "POST", "/v1/jobs", JOB | {"env": {"SEED": 1}}, 422, "env.SEED"),
    ("job-bad-gpu-model-name", "member", "POST", "/v1/jobs", JOB | {"gpu_models": ["H 100"]}, 422, "gpu_models.0"),
    ("job-empty-client-key", "member", "POST", "/v1/jobs", JOB | {"client_key": ""}, 422, "client_key"),
    ("job-project-missing", "member", "POST", "/v1/jobs", {"time_limit_s": 60}, 422, "project"),
    # jobs: the model's rules
    ("job-fractional-with-2-gpus", "member", "POST", "/v1/jobs", JOB | {"gpu_milli": 500, "gpus": 2}, 422,
     "job.gpu_milli"),
    ("job-unknown-priority", "member", "POST", "/v1/jobs", JOB | {"priority": "critical"}, 422, "job.priority"),
    ("job-unknown-topology", "member", "POST", "/v1/jobs", JOB | {"min_topology": "galaxy"}, 422, "job.min_topology"),
    ("job-unknown-classification", "member", "POST", "/v1/jobs", JOB | {"classification": "cosmic"}, 422,
     "job.classification"),
    ("job-nodes-without-per-node", "member", "POST", "/v1/jobs", JOB | {"nodes": 2}, 422, "job.nodes"),
    ("job-shape-mismatch", "member", "POST", "/v1/jobs", JOB | {"nodes": 2, "gpus_per_node": 8, "gpus": 4}, 422,
     "job.gpus"),
    # jobs: objects
    ("job-project-unknown", "member", "POST", "/v1/jobs", JOB | {"project": "no-such"}, 404, "project"),
    ("job-project-of-other-org", "member", "POST", "/v1/jobs", JOB | {"project": "tinyml-llm"}, 404, "project"),
    ("cancel-finished-job", "member", "POST", "/v1/jobs/{done}/cancel", None, 409, "job {done}"),
    ("cancel-unknown-job", "member", "POST", "/v1/jobs/987654321/cancel", None, 404, "job"),
    ("job-id-not-a-number", "member", "GET", "/v1/jobs/abc", None, 422, "path.job_id"),
    ("job-id-zero", "member", "GET", "/v1/jobs/0", None, 422, "path.job_id"),
    ("job-id-beyond-64-bits", "member", "GET", "/v1/jobs/99999999999999999999999", None, 422, "path.job_id"),
    ("list-jobs-nul-in-project", "member", "GET", "/v1/jobs?project=a%00b", None, 422, "query.project"),
    ("list-jobs-nul-in-state", "member", "GET", "/v1/jobs?state=a%00b", None, 422, "query.state.0"),
    ("list-jobs-limit-zero", "member", "GET", "/v1/jobs?limit=0", None, 422, "query.limit"),
    # tenancy
    ("duplicate-organization", "operator", "POST", "/v1/organizations", {"name": "snu-vision", "kind": "university"},
     409, "organization 'snu-vision'"),
    ("unknown-organization-kind", "operator", "POST", "/v1/organizations", {"name": "o-x", "kind": "castle"}, 422,
     "organization.kind"),
    ("organization-bad-name", "operator", "POST", "/v1/organizations", {"name": "-x", "kind": "startup"}, 422, "name"),
    ("duplicate-project", "operator", "POST", "/v1/projects", {"name": "vision-lab", "organization": "snu-vision"},
     409, "project 'vision-lab'"),
    ("project-in-unknown-org", "operator", "POST", "/v1/projects", {"name": "p-x", "organization": "nope"}, 404,
     "organization"),
    ("unknown-role", "operator", "POST", "/v1/users", {"name": "u-x", "role": "king"}, 422, "user.role"),
    ("member-without-organization", "operator", "POST", "/v1/users", {"name": "u-y", "role": "member"}, 422,
     "user.organization"),
    ("duplicate-user", "operator", "POST", "/v1/users", {"name": "rev", "role": "reviewer"}, 409, "user 'rev'"),
    ("member-in-foreign-project", "admin", "POST", "/v1/users",
     {"name": "u-z", "role": "member", "organization": "snu-vision", "projects": ["tinyml-llm"]}, 404, "project"),
    # programs, applications, reviews, decisions, grants
    ("duplicate-program", "operator", "POST", "/v1/programs", {"name": "lab-grants"}, 409, "program 'lab-grants'"),
    ("program-unknown-rule", "operator", "POST", "/v1/programs", {"name": "p-r", "rules": {"bogus": 1}}, 422,
     "program.rules.bogus"),
    ("program-bad-cap", "operator", "POST", "/v1/programs",
     {"name": "p-c", "rules": {"per_project_cap": {"H100": "x"}}}, 422, "program.rules.per_project_cap.H100"),
    ("program-weight-zero", "operator", "POST", "/v1/programs", {"name": "p-w", "weight": 0}, 422, "weight"),
    ("program-unknown", "operator", "GET", "/v1/programs/no-such", None, 404, "program"),
    ("program-nul-in-name", "operator", "GET", "/v1/programs/a%00b", None, 422, "path.name"),
    ("application-over-cap", "admin", "POST", "/v1/applications", APPLICATION | {"gpus": 17}, 422, "application.gpus"),
    ("application-too-long", "admin", "POST", "/v1/applications", APPLICATION | {"months": 13}, 422,
     "application.months"),
    ("application-ineligible", "admin", "POST", "/v1/applications", APPLICATION | {"program": "acme-private"}, 422,
     "application.organization"),
    ("application-zero-gpus", "admin", "POST", "/v1/applications", APPLICATION | {"gpus": 0}, 422, "gpus"),
    ("application-unknown-program", "admin", "POST", "/v1/applications", APPLICATION | {"program": "nope"}, 404,
     "program"),
    ("list-applications-nul", "admin", "GET", "/v1/applications?status=%00", None, 422, "query.status"),
    ("review-missing-criteria", "operator", "POST", "/v1/applications/{app}/reviews", {"scores": {"impact": 1}}, 422,
     "review.scores"),
    ("review-score-over-10", "operator", "POST", "/v1/applications/{app}/reviews",
     {"scores": SCORES | {"impact": 11}}, 422, "scores.impact"),
    ("decide-unknown-application", "operator", "POST", "/v1/applications/987654321/decision", {"approve": True}, 404,
     "application"),
    ("decide-approve-not-boolean", "operator", "POST", "/v1/applications/{app}/decision", {"approve": "yes"}, 422,
     "approve"),
    ("grant-ends-before-start", "operator", "POST", "/v1/grants",
     GRANT | {"name": "g-x", "end_s": NOW - 1, "credit_su_hours": 1}, 422, "grant 'g-x'.end"),
    ("grant-grants-nothing", "operator", "POST", "/v1/grants", GRANT | {"name": "g-y"}, 422, "grant 'g-y'"),
    ("duplicate-grant", "operator", "POST", "/v1/grants", GRANT | {"name": "g-vision", "credit_su_hours": 1}, 409,
     "grant 'g-vision'"),
    ("grant-over-project-cap", "operator", "POST", "/v1/grants",
     GRANT | {"name": "g-z", "reserved_model": "H100", "reserved_gpus": 16}, 409, "grant 'g-z'"),
    # usage, audit, transport
    ("usage-unknown-grouping", "admin", "GET", "/v1/usage?by=color", None, 422, "by"),
    ("usage-since-after-until", "admin", "GET", "/v1/usage?since_s=10&until_s=5", None, 422, "since"),
    ("usage-unknown-format", "admin", "GET", "/v1/usage?format=xml", None, 422, "query.format"),
    ("audit-limit-too-big", "operator", "GET", "/v1/audit?limit=100000", None, 422, "query.limit"),
    ("malformed-json", "member", "POST", "/v1/jobs", b'{"project":', 422, "body"),
    ("nan-time-limit", "member", "POST", "/v1/jobs", b'{"project": "vision-lab", "time_limit_s": NaN}', 422,
     "time_limit_s"),
    ("body-not-an-object", "member", "POST", "/v1/jobs", [1, 2], 422, ""),
    ("wrong-method", "member", "DELETE", "/v1/jobs/{done}", None, 405, ""),
]  # fmt: skip

CALLERS = {"member": ("member", "snu-vision"), "admin": ("org-admin", "snu-vision"), "operator": ("operator", None)}


def _send(api: Api, token: str, method: str, path: str, body: Any) -> Any:
    headers = as_(token)
    if isinstance(body, bytes):
        return api.client.request(method, path, content=body, headers=headers | {"content-type": "application/json"})
    return api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("caller", "method", "path", "body", "status", "where"), [pytest.param(*case[1:], id=case[0]) for case in BAD]
)
def test_bad_request(
    shared_world: World, caller: str, method: str, path: str, body: Any, status: int, where: str
) -> None:
    w = shared_world
    ids = {"done": w.finished["snu-vision"], "app": w.applications["snu-vision"]}
    path, where = path.format(**ids), where.format(**ids)
    before = w.api.writes()
    r = _send(w.api, w.token(*CALLERS[caller]), method, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == CODES[status]
    assert error["message"]
    if where:
        assert error["where"] == where or error["where"].endswith("." + where), error
    assert w.api.writes() == before, "a failed request wrote to the store"


def test_bad_ids_are_indistinguishable_from_hidden_ones(shared_world: World) -> None:
    """A tenant cannot tell another tenant's job or application from one that does not exist."""
    w = shared_world
    member = w.token("member", "snu-vision")
    for kind, theirs in (("jobs", w.jobs["tinyml"]), ("applications", w.applications["tinyml"])):
        hidden = w.api.get(f"/v1/{kind}/{theirs}", member)
        missing = w.api.get(f"/v1/{kind}/987654321", member)
        assert hidden.status_code == missing.status_code == 404
        a, b = hidden.json()["error"], missing.json()["error"]
        assert (a["code"], a["where"], a["fix"]) == (b["code"], b["where"], b["fix"])
        assert a["message"].replace(str(theirs), "N") == b["message"].replace("987654321", "N")


# ---- idempotent submission ------------------------------------------------------------------------------------


def test_idempotent_submit(shared_world: World) -> None:
    w = shared_world
    api = w.api
    member, colleague = w.token("member", "snu-vision"), w.token("member2", "snu-vision")
    key = unique("key")
    first = api.post("/v1/jobs", member, JOB | {"client_key": key, "name": "once"})
    assert first.status_code == 201, first.text
    before = api.writes()
    again = api.post("/v1/jobs", member, JOB | {"client_key": key, "name": "once"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == first.json()
    # the key belongs to the project: a colleague's identical retry is the same submission ...
    same = api.post("/v1/jobs", colleague, JOB | {"client_key": key, "name": "once"})
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])
    # ... and the same key with another body is a conflict that names the key and the job (never the first job)
    other = api.post("/v1/jobs", colleague, JOB | {"client_key": key, "name": "different", "gpus": 4})
    assert other.status_code == 409, other.text
    assert key in other.json()["error"]["where"] and str(first.json()["id"]) in other.json()["error"]["message"]
    assert api.writes() == before, "a repeated submission wrote something"
    # the same key in another project is another submission
    theirs = api.post("/v1/jobs", w.token("member", "tinyml"), {**JOB, "project": "tinyml-llm", "client_key": key})
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]
    # a tenant cannot probe another project's keys: the project is not found before the key is looked up
    probe = api.post("/v1/jobs", member, {**JOB, "project": "tinyml-llm", "client_key": key})
    assert probe.status_code == 404


def test_idempotent_submit_under_concurrency(api: Api) -> None:
    """Retries racing each other (one client key, many threads) make exactly one job: one 201, the rest 200."""
    world = World(api)
    member = world.create_user("racer", "member", "snu-vision", ("vision-lab",))
    body = JOB | {"client_key": "race-1", "name": "raced"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _i: api.post("/v1/jobs", member, body), range(16)))
    assert sorted(r.status_code for r in answers) == [200] * 15 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert api.count(t.Job) == 1
    assert api.get("/v1/audit/verify", api.operator).json()["ok"] is True


# ---- the audit chain ----------------------------------------------------------------------------------------------


def _audit_len(api: Api, actor: str | None = None) -> int:
    q = select(func.count()).select_from(t.AuditEntry)
    if actor is not None:
        q = q.where(t.AuditEntry.actor == actor)
    with api.rt.sessions() as s:
        return int(s.scalar(q) or 0)


def _burst(w: World) -> int:
    """A burst of mutations of every kind through the API; returns how many were accepted."""
    api, op = w.api, w.api.operator
    admin, member = w.token("org-admin", "snu-vision"), w.token("member", "snu-vision")
    ok = 0

    def expect(r: Any, status: int) -> None:
        nonlocal ok
        assert r.status_code == status, r.text
        ok += 1

    for i in range(5):
        job = api.post("/v1/jobs", member, JOB | {"name": f"burst-{i}", "gpus": 1})
        expect(job, 201)
        if i % 2:
            expect(api.post(f"/v1/jobs/{job.json()['id']}/cancel", admin), 200)
    expect(api.post("/v1/organizations", op, {"name": "burst-org", "kind": "institute", "region": "daegu"}), 201)
    expect(api.post("/v1/projects", op, {"name": "burst-proj", "organization": "burst-org"}), 201)
    expect(api.post("/v1/users", admin, {"name": "burst-m", "role": "member", "organization": "snu-vision",
                                         "projects": ["vision-lab"]}), 201)  # fmt: skip
    expect(api.post("/v1/programs", op, {"name": "burst-prog", "rules": {"review_weights": {"impact": 1}}}), 201)
    app = api.post("/v1/applications", admin, APPLICATION)
    expect(app, 201)
    app_id = app.json()["id"]
    reviewer = w.token("reviewer")
    expect(api.post(f"/v1/applications/{app_id}/reviews", reviewer, {"scores": SCORES}), 201)
    expect(api.post(f"/v1/applications/{app_id}/reviews", reviewer, {"scores": SCORES | {"impact": 2}}), 201)
    expect(api.post(f"/v1/applications/{app_id}/decision", op, {"approve": True, "note": "go"}), 200)
    expect(api.post("/v1/grants", op, GRANT | {"name": "burst-grant", "credit_su_hours": 50}), 201)
    api.tick(30.0, times=3)  # the controller's own transitions and usage records are not audited, but must not harm
    return ok


def test_audit_verifies_after_a_burst(world: World) -> None:
    api = world.api
    before, decided_before = _audit_len(api), _audit_len(api, actor="controller")
    accepted = _burst(world)
    n = _audit_len(api)
    decisions = _audit_len(api, actor="controller") - decided_before
    # every accepted mutation is audited once; the approval twice (application.approve and its grant.create);
    # the controller adds its own decisions (admissions, starts, ends)
    assert n - decisions == before + accepted + 1
    r = api.get("/v1/audit/verify", api.operator)
    assert r.status_code == 200, r.text
    assert (r.json()["ok"], r.json()["entries"]) == (True, n)
    entries = api.get("/v1/audit", api.operator, params={"limit": 10_000}).json()
    assert len(entries) == n
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    actions = {e["action"] for e in entries}
    assert {"job.submit", "job.cancel", "organization.create", "project.create", "user.create", "program.create",
            "application.submit", "review.create", "review.update", "application.approve",
            "grant.create"} <= actions  # fmt: skip


def _columns(e: t.AuditEntry) -> dict[str, Any]:
    return {c.key: getattr(e, c.key) for c in t.AuditEntry.__table__.columns}


def test_audit_tampering_is_named(world: World) -> None:
    """Each kind of tampering, done straight in the database, makes verify answer 409 naming where the chain
    breaks; undoing it makes the chain verify again (so each case starts from an intact chain)."""
    api = world.api
    _burst(world)
    with api.rt.sessions() as s:
        rows = [_columns(e) for e in s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id))]
    ids = [r["id"] for r in rows]
    victim = rows[len(rows) // 2]
    after_victim = ids[ids.index(victim["id"]) + 1]
    cases = [  # (how, the entry to tamper with, SQL, expected where, expected word in the message)
        ("edit-detail", victim, "UPDATE audit_log SET detail = :detail WHERE id = :id",
         f"audit entry {victim['id']}", "edited"),
        ("edit-actor", victim, "UPDATE audit_log SET actor = 'mallory' WHERE id = :id",
         f"audit entry {victim['id']}", "edited"),
        ("edit-time", victim, "UPDATE audit_log SET at_s = at_s + 1 WHERE id = :id",
         f"audit entry {victim['id']}", "edited"),
        ("delete-entry", victim, "DELETE FROM audit_log WHERE id = :id", f"audit entry {after_victim}", "removed"),
        ("drop-newest", rows[-1], "DELETE FROM audit_log WHERE id = :id", "audit log", "removed"),
    ]  # fmt: skip
    for how, row, sql, where, word in cases:
        with api.rt.sessions.begin() as s:
            s.execute(text(sql), {"id": row["id"], "detail": json.dumps({"name": "mallory"})})
        r = api.get("/v1/audit/verify", api.operator)
        assert r.status_code == 409, (how, r.text)
        error = r.json()["error"]
        assert (error["code"], error["where"]) == ("conflict", where), (how, error)
        assert word in error["message"], (how, error)
        with api.rt.sessions.begin() as s:  # undo it
            s.execute(delete(t.AuditEntry).where(t.AuditEntry.id == row["id"]))
            s.add(t.AuditEntry(**row))
        again = api.get("/v1/audit/verify", api.operator).json()
        assert (again["ok"], again["entries"]) == (True, len(rows)), how
    # tenants cannot even ask
    assert api.get("/v1/audit/verify", world.token("org-admin", "snu-vision")).status_code == 403
