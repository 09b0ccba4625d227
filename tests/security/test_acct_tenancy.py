"""Attacks on per-job accounting (``GET /v1/acct``) and the queue's filters (``GET /v1/jobs?user=&pool=``): a
tenant asking for another tenant's jobs by user, project or pool gets nothing of theirs; roles that run no jobs
are refused; bad parameters are 422s that write nothing. On both stores, through the API."""

from __future__ import annotations

import pytest
from api_world import PROJECT_OF, TENANTS, World

OTHER = {"snu-vision": "tinyml", "tinyml": "snu-vision"}


@pytest.mark.parametrize("org", TENANTS)
def test_a_tenant_sees_only_its_own_jobs(world: World, org: str) -> None:
    api, other = world.api, OTHER[org]
    for role in ("member", "org-admin"):
        token = world.token(role, org)
        mine = api.get("/v1/acct", token, params={"start_s": 0})
        assert mine.status_code == 200, mine.text
        assert {r["project"] for r in mine.json()} == {PROJECT_OF[org]}
        assert world.finished[org] in {r["id"] for r in mine.json()}
        done = next(r for r in mine.json() if r["id"] == world.finished[org])
        assert done["gpu_hours"] > 0 and done["state"] == "succeeded"  # its usage records, summed
        # asking for the other tenant's project, user or jobs by state: nothing of theirs
        for params in ({"project": PROJECT_OF[other]}, {"user": f"{other}-member@{other}"}, {"state": "succeeded"}):
            got = api.get("/v1/acct", token, params={"start_s": 0, **params})
            assert got.status_code == 200, got.text
            assert all(r["project"] == PROJECT_OF[org] for r in got.json()), params
        for params in ({"project": PROJECT_OF[other]}, {"user": f"{other}-member@{other}"}, {"pool": "gov-h100"}):
            got = api.get("/v1/jobs", token, params=params)
            assert got.status_code == 200, got.text
            assert all(r["project"] == PROJECT_OF[org] for r in got.json()), params


def test_the_operator_sees_every_tenant(world: World) -> None:
    got = world.api.get("/v1/acct", world.api.operator, params={"start_s": 0})
    assert got.status_code == 200
    assert {PROJECT_OF[o] for o in TENANTS} <= {r["project"] for r in got.json()}


@pytest.mark.parametrize("role", ["reviewer", "provider"])
def test_roles_that_run_no_jobs_are_refused(world: World, role: str) -> None:
    got = world.api.get("/v1/acct", world.token(role))
    assert got.status_code == 403, got.text
    assert "runs no jobs" in got.text


@pytest.mark.parametrize(
    "params",
    [
        {"start_s": -1},
        {"end_s": 10**12},
        {"limit": 0},
        {"limit": 10**6},
        {"format": "xml"},
        {"user": "x" * 5000},
        {"start_s": 2000, "end_s": 1000},
    ],
    ids=["negative-start", "far-end", "zero-limit", "huge-limit", "bad-format", "long-user", "reversed-window"],
)
def test_bad_parameters_are_refused_cleanly(world: World, params: dict[str, object]) -> None:
    before = world.api.writes()
    got = world.api.get("/v1/acct", world.token("member", "tinyml"), params=params)
    assert got.status_code == 422, got.text
    assert "Traceback" not in got.text
    assert world.api.writes() == before


def test_no_token_no_accounting(world: World) -> None:
    assert world.api.get("/v1/acct", None).status_code == 401
