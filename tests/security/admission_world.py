"""Helpers for the admission attack tests: a tenant of its own (organization, project, member) whose one grant is
under a program with the rules a test needs, all made through the API on the lab fleet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api_world import DAY, NOW, Api, World, unique


@dataclass(frozen=True)
class Tenant:
    project: str
    program: str
    grant: str
    member: str  # a member's token


def tenant(w: World, rules: dict[str, Any] | None = None, start: float = NOW - DAY, end: float = NOW + 30 * DAY,
           owner: str = "government") -> Tenant:  # fmt: skip
    """A new organization, project and member, with one credit grant from ``start`` to ``end`` under a new
    program of ``owner`` with ``rules``."""
    api, op = w.api, w.api.operator
    org, project, program = unique("org"), unique("proj"), unique("prog")
    _ok(api.post("/v1/organizations", op, {"name": org, "kind": "institute", "region": "daejeon"}))
    _ok(api.post("/v1/projects", op, {"name": project, "organization": org}))
    _ok(api.post("/v1/programs", op, {"name": program, "owner": owner, "rules": rules or {}}))
    grant = unique("g")
    body = {"name": grant, "program": program, "project": project, "start_s": start, "end_s": end,
            "credit_su_hours": 1000.0}  # fmt: skip
    _ok(api.post("/v1/grants", op, body))
    member = w.create_user(unique("m"), "member", org, (project,))
    return Tenant(project, program, grant, member)


def submit(api: Api, token: str, project: str, **spec: Any) -> Any:
    """POST a job (one hour unless given); the response."""
    return api.post("/v1/jobs", token, {"project": project, "time_limit_s": 3600.0, **spec})


def refused(r: Any, status: int, where: str, *words: str) -> dict[str, str]:
    """Assert the standard error body with ``status``, ``where`` and every word in message or fix."""
    assert r.status_code == status, r.text
    error: dict[str, str] = r.json()["error"]
    assert error["where"] == where, error
    text = f"{error['message']} {error['fix']}"
    for word in words:
        assert word in text, (word, error)
    assert error["fix"], error
    return error


def _ok(r: Any) -> None:
    assert r.status_code == 201, r.text
