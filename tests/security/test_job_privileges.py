"""Privileges a job asks for (issue 15, hole 10): priority classes above normal need the operator role or a
program that allows them (rule ``max_priority``); CPU-only work (``gpus: 0``) only where a program allows it (rule
``allow_cpu_only``). Through the API on both stores."""

from __future__ import annotations

from typing import Any

import pytest
from admission_world import refused, submit, tenant
from api_world import World

# rules of the tenant's program, who submits, the job, the expected status
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], int]] = [
    ("member-urgent", {}, "member", {"priority": "urgent"}, 403),
    ("member-high", {}, "member", {"priority": "high"}, 403),
    ("member-normal", {}, "member", {"priority": "normal"}, 201),
    ("member-scavenger", {}, "member", {"priority": "scavenger"}, 201),
    ("operator-urgent", {}, "operator", {"priority": "urgent"}, 201),
    ("program-allows-high", {"max_priority": "high"}, "member", {"priority": "high"}, 201),
    ("program-allows-high-not-urgent", {"max_priority": "high"}, "member", {"priority": "urgent"}, 403),
    ("member-cpu-only", {}, "member", {"gpus": 0}, 422),
    ("operator-cpu-only", {}, "operator", {"gpus": 0}, 422),
    ("program-allows-cpu-only", {"allow_cpu_only": True}, "member", {"gpus": 0}, 201),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rules", "who", "spec", "status"), CASES, ids=[c[0] for c in CASES])
def test_privileges_follow_the_role_and_the_program(
    world: World, name: str, rules: dict[str, Any], who: str, spec: dict[str, Any], status: int
) -> None:
    t = tenant(world, rules)
    token = world.api.operator if who == "operator" else t.member
    before = world.api.writes()
    r = submit(world.api, token, t.project, **spec)
    if status == 201:
        assert r.status_code == 201, r.text
        return
    assert world.api.writes() == before, "a refused submission wrote something"
    if status == 403:
        allowed = rules.get("max_priority", "normal")
        refused(r, 403, f"submit at priority {spec['priority']}", f"program '{t.program}' allows up to {allowed}",
                f"--priority {allowed} or lower")  # fmt: skip
    else:
        refused(r, 422, "job.gpus", "asks no GPU", "allow_cpu_only", "--gpus 1")


def test_the_lab_tenants_keep_normal_priority(world: World) -> None:
    member = world.token("member", "snu-vision")
    refused(submit(world.api, member, "vision-lab", priority="urgent"), 403, "submit at priority urgent",
            "program 'lab-grants' allows up to normal")  # fmt: skip
    assert submit(world.api, member, "vision-lab", priority="low").status_code == 201
