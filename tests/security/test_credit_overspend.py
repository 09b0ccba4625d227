"""Credits cannot be overspent (issue 15, hole 5), through the live service (lab fleet, sim backend, fake clock).

The attack: a grant with 0.001 SU-hours of credit, and jobs whose time limits need far more. Before, both jobs
ran (the check was only "credit left > 0") and used 100x the credit. Now each job holds its time limit at its
SU rate when it is admitted; a job the free credit does not cover waits with a reason that says how much it
needs and how much is free; an operator's top-up (audited, note required) lets it run; the end of a job charges
what it used and gives the rest back."""

from __future__ import annotations

from typing import Any

import pytest
from api_world import Api, World
from sqlalchemy import func, select

from kfabric.cli.main import main
from kfabric.store import tables as t

GRANT = "g-tinyml"
PROJECT = "tinyml-llm"
#: 1 H100 (1 SU per GPU-hour) for 60 s: 0.0167 SU-hours held at admission; it runs 10 s (0.00278 SU-hours)
JOB = {"project": PROJECT, "gpus": 1, "gpu_models": ["H100"], "time_limit_s": 60.0, "runtime_estimate_s": 10.0}
NEED = 60.0 / 3600.0


def grant_row(api: Api) -> t.Grant:
    with api.rt.sessions() as s:
        row = s.scalars(select(t.Grant).where(t.Grant.name == GRANT)).one()
        return row


def held(api: Api) -> float:
    g = grant_row(api)
    with api.rt.sessions() as s:
        q = select(func.sum(t.Job.reserved_su_hours)).where(
            t.Job.grant_id == g.id, t.Job.state.in_(("admitted", "running"))
        )
        return float(s.scalar(q) or 0.0)


def job(api: Api, job_id: int) -> t.Job:
    with api.rt.sessions() as s:
        row = s.get(t.Job, job_id)
        assert row is not None
        return row


def set_credit(api: Api, su_hours: float) -> None:
    with api.rt.sessions.begin() as s:
        s.scalars(select(t.Grant).where(t.Grant.name == GRANT)).one().credit_su_hours = su_hours


def tick(api: Api, times: int = 1) -> None:
    """Run the controller; after every tick the grant's use plus what its active jobs hold fits its credit."""
    for _ in range(times):
        api.tick(5.0)
        g = grant_row(api)
        assert g.used_su_hours + held(api) <= g.credit_su_hours + 1e-9, (g.used_su_hours, held(api))


def submit(api: Api, name: str) -> int:
    r = api.post("/v1/jobs", api.operator, {**JOB, "name": name})
    assert r.status_code in (200, 201), r.text
    return int(r.json()["id"])


def top_up(api: Api, token: str | None, grant: str, body: dict[str, Any]) -> Any:
    return api.post(f"/v1/grants/{grant}/topup", token, body)


def test_a_tiny_grant_runs_nothing_it_cannot_pay_for_until_topped_up(api: Api) -> None:
    set_credit(api, 0.001)
    first, second = submit(api, "first"), submit(api, "second")
    tick(api, 3)
    for jid in (first, second):
        row = job(api, jid)
        assert (row.state, row.reason_code) == ("pending", "credit_exhausted")
        assert row.reason == (
            f"needs 0.0167 SU-hours at its time limit, 0.001 free of grant {GRANT}; top it up or lower --time"
        )
    assert grant_row(api).used_su_hours == 0.0

    # an operator tops the grant up: enough for one job's time limit, not two
    r = top_up(api, api.operator, GRANT, {"su_hours": 0.02, "note": "issue 15 attack test"})
    assert r.status_code == 200, r.text
    assert r.json()["credit_su_hours"] == pytest.approx(0.021)
    with api.rt.sessions() as s:
        entry = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == "grant.topup")).one()
        assert entry.detail["note"] == "issue 15 attack test"
        assert entry.detail["su_hours"] == 0.02
        assert (entry.detail["credit_before"], entry.detail["credit_after"]) == (0.001, pytest.approx(0.021))

    tick(api)
    assert job(api, first).state in ("admitted", "running")
    assert job(api, first).reserved_su_hours == pytest.approx(NEED)
    row = job(api, second)
    assert (row.state, row.reason_code) == ("pending", "credit_exhausted")
    assert row.reason == (
        f"needs 0.0167 SU-hours at its time limit, 0.00433 free of grant {GRANT}; top it up or lower --time"
    )
    listed = next(g for g in api.get("/v1/grants", api.operator).json() if g["name"] == GRANT)
    assert (listed["held_su_hours"], listed["free_su_hours"]) == (pytest.approx(NEED), pytest.approx(0.00433, 1e-2))

    # the first job ends after 10 s: its use is charged, the rest of what it held goes back, the second runs
    tick(api, 2)
    done = job(api, first)
    assert (done.state, done.reserved_su_hours) == ("succeeded", 0.0)
    assert grant_row(api).used_su_hours == pytest.approx(10.0 / 3600.0)
    tick(api, 6)
    assert job(api, second).state == "succeeded"
    g = grant_row(api)
    assert g.used_su_hours == pytest.approx(20.0 / 3600.0)
    assert held(api) == 0.0
    assert g.credit_su_hours - g.used_su_hours == pytest.approx(0.021 - 20.0 / 3600.0)


def test_jobs_of_one_cycle_do_not_share_credit(api: Api) -> None:
    set_credit(api, 1.5 * NEED)  # one job's time limit and a half
    ids = [submit(api, f"j{i}") for i in range(4)]
    tick(api)
    states = [job(api, i).state for i in ids]
    assert states.count("pending") == 3, states
    assert held(api) == pytest.approx(NEED)


TOP_UPS = [
    pytest.param("operator", GRANT, {"su_hours": 0, "note": "zero"}, 422, id="zero"),
    pytest.param("operator", GRANT, {"su_hours": -5, "note": "negative"}, 422, id="negative"),
    pytest.param("operator", GRANT, {"su_hours": 5}, 422, id="no-note"),
    pytest.param("operator", GRANT, {"su_hours": 5, "note": ""}, 422, id="empty-note"),
    pytest.param("operator", GRANT, {"su_hours": 5, "note": "   "}, 422, id="blank-note"),
    pytest.param("operator", GRANT, {"su_hours": "5", "note": "a string"}, 422, id="string-amount"),
    pytest.param("operator", "g-acme", {"su_hours": 5, "note": "reservation-only grant"}, 422, id="no-credit-limit"),
    pytest.param("operator", "g-nowhere", {"su_hours": 5, "note": "unknown"}, 404, id="unknown"),
    pytest.param("tinyml/org-admin", GRANT, {"su_hours": 5, "note": "my own grant"}, 403, id="org-admin"),
    pytest.param("tinyml/member", GRANT, {"su_hours": 5, "note": "my own grant"}, 403, id="member"),
    pytest.param("snu-vision/member", GRANT, {"su_hours": 5, "note": "another tenant's"}, 403, id="other-tenant"),
    pytest.param(None, GRANT, {"su_hours": 5, "note": "no token"}, 401, id="anonymous"),
]


@pytest.mark.parametrize(("who", "grant", "body", "status"), TOP_UPS)
def test_only_operators_top_up_by_a_positive_amount_with_a_note(
    world: World, who: str | None, grant: str, body: dict[str, Any], status: int
) -> None:
    api = world.api
    before = grant_row(api).credit_su_hours
    audit_before = api.count(t.AuditEntry)
    r = top_up(api, world.tokens[who] if who else None, grant, body)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert grant_row(api).credit_su_hours == before
    assert api.count(t.AuditEntry) == audit_before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--su-hours", "0", "--note", "x"], "--su-hours: expected service-unit hours > 0"),
        (["--su-hours", "-3", "--note", "x"], "--su-hours: expected service-unit hours > 0"),
        (["--su-hours", "inf", "--note", "x"], "--su-hours: expected service-unit hours > 0"),
        (["--su-hours", "lots", "--note", "x"], "--su-hours: expected service-unit hours > 0"),
        (["--su-hours", "5", "--note", "  "], "--note: say why"),
    ],
    ids=["zero", "negative", "infinite", "not-a-number", "blank-note"],
)
def test_the_cli_refuses_a_bad_top_up_before_calling_the_server(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grant", "topup", GRANT, *args, "--url", "http://127.0.0.1:9", "--token", "x"]) == 2
    assert message in capsys.readouterr().err
