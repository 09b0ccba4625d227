"""Attacks on the Slurm-style job controls (issue 19): another tenant cannot hold, release, update, requeue,
cancel, read the script of, or depend on your jobs (404, as for a job that does not exist, and nothing is
written); a member cannot act on a colleague's job nor raise a priority or time limit; an operator's hold binds
tenants; oversize scripts and arrays are refused with a clear error before anything is parsed or stored."""

from __future__ import annotations

from typing import Any

import pytest
from api_world import World

from kfabric.api.schemas import MAX_SCRIPT_BYTES
from kfabric.service.job_arrays import MAX_ARRAY_TASKS

ACTIONS = [
    ("hold", "post", "/hold", None),
    ("release", "post", "/release", None),
    ("requeue", "post", "/requeue", None),
    ("cancel", "post", "/cancel", None),
    ("update", "patch", "", {"time_limit_s": 60.0}),
    ("script", "get", "/script", None),
]


def _call(world: World, method: str, path: str, token: str, body: Any) -> Any:
    if method == "get":
        return world.api.get(path, token)
    if method == "patch":
        return world.api.client.patch(path, headers={"Authorization": f"Bearer {token}"}, json=body)
    return world.api.post(path, token, body)


@pytest.mark.parametrize(("name", "method", "suffix", "body"), ACTIONS, ids=[a[0] for a in ACTIONS])
def test_another_tenant_gets_not_found_and_writes_nothing(
    world: World, name: str, method: str, suffix: str, body: Any
) -> None:
    target = world.snu_job()
    before = world.api.writes()
    for ref in (str(target), f"{target}_0"):
        r = _call(world, method, f"/v1/jobs/{ref}{suffix}", world.token("member", "tinyml"), body)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert world.api.writes() == before
    assert world.api.job_state(target) == ("pending", False)


def test_depending_on_another_tenants_job_is_not_found(world: World) -> None:
    target = world.snu_job()
    before = world.api.writes()
    r = world.api.post("/v1/jobs", world.token("member", "tinyml"),
                       {"project": "tinyml-llm", "time_limit_s": 60.0, "dependency": f"afterok:{target}"})  # fmt: skip
    assert r.status_code == 404 and str(target) in r.json()["error"]["message"]
    body = {"project": "tinyml-llm", "time_limit_s": 60.0, "dependency": "afterok:987654"}
    missing = world.api.post("/v1/jobs", world.token("member", "tinyml"), body)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == r.json()["error"]["code"]
    assert world.api.writes() == before


def test_a_member_cannot_touch_a_colleagues_job(world: World) -> None:
    target = world.snu_job()
    colleague = world.token("member2", "snu-vision")
    for method, suffix, body in (("post", "/hold", None), ("patch", "", {"name": "x"}), ("get", "/script", None)):
        r = _call(world, method, f"/v1/jobs/{target}{suffix}", colleague, body)
        assert r.status_code == 403, r.text


def test_a_member_cannot_raise_priority_or_time(world: World) -> None:
    target = world.snu_job()
    member = world.token("member", "snu-vision")
    path = f"/v1/jobs/{target}"
    for body, what in (({"priority": "high"}, "raise the priority"), ({"time_limit_s": 7200.0}, "raise the time")):
        r = _call(world, "patch", path, member, body)
        assert r.status_code == 403 and what in r.json()["error"]["message"], r.text
    lowered = _call(world, "patch", path, member, {"priority": "low", "time_limit_s": 1800.0})
    assert lowered.status_code == 200 and lowered.json()["changed"] == 1
    raised = _call(world, "patch", path, world.api.operator, {"priority": "high", "time_limit_s": 7200.0})
    assert raised.status_code == 200


def test_an_operators_hold_binds_the_owner(world: World) -> None:
    target = world.snu_job()
    member = world.token("member", "snu-vision")
    assert world.api.post(f"/v1/jobs/{target}/hold", world.api.operator).status_code == 200
    r = world.api.post(f"/v1/jobs/{target}/release", member)
    assert r.status_code == 403 and "only an operator can release it" in r.json()["error"]["message"]
    assert world.api.post(f"/v1/jobs/{target}/release", world.api.operator).status_code == 200


def test_oversize_script_is_refused_before_parsing(world: World) -> None:
    before = world.api.writes()
    script = "#SBATCH -t 1\n" + "x" * MAX_SCRIPT_BYTES
    r = world.api.post("/v1/jobs", world.token("member", "snu-vision"),
                       {"project": "vision-lab", "time_limit_s": 60.0, "script": script})  # fmt: skip
    assert r.status_code == 422 and "256 KiB" in r.text
    nul = world.api.post("/v1/jobs", world.token("member", "snu-vision"),
                         {"project": "vision-lab", "time_limit_s": 60.0, "script": "echo\x00"})  # fmt: skip
    assert nul.status_code == 422 and "NUL" in nul.text
    assert world.api.writes() == before


@pytest.mark.parametrize(
    ("array", "says"),
    [
        (f"0-{MAX_ARRAY_TASKS}", f"more than {MAX_ARRAY_TASKS} tasks"),
        ("0-4000000:1", f"more than {MAX_ARRAY_TASKS} tasks"),
        ("0-99999999", "above the highest"),
        ("1," * 2500 + "1", "characters"),
        ("5-1", "ends before it starts"),
        ("0-9%0", "is not a cap"),
    ],
    ids=["too-many", "huge-range", "huge-index", "too-long", "backwards", "zero-cap"],
)
def test_oversize_or_bad_arrays_are_refused(world: World, array: str, says: str) -> None:
    before = world.api.writes()
    r = world.api.post("/v1/jobs", world.token("member", "snu-vision"),
                       {"project": "vision-lab", "time_limit_s": 60.0, "array": array})  # fmt: skip
    assert r.status_code == 422 and says in r.text, r.text
    assert world.api.writes() == before
