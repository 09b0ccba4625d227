"""``GET /v1/jobs`` is encoded from selected columns without a model per job (service/job_queries.py): its JSON is
a contract, so every job it lists must have exactly the keys, order, types and values of ``JobPublic`` built from
the job's stored row (the answer of ``GET /v1/jobs/{id}``, and the reference below, written field by field as the
list route built it before), for a variety of jobs: pending, held, array tasks, dependencies, a begin time,
running with a placement, ended with an exit code, cancelled, fractional GPUs, non-ASCII names."""

from __future__ import annotations

import json
from typing import Any

from api_world import Api, World

from kfabric.api.schemas import JobPublic, NodePublic
from kfabric.store import tables as t

ALL_STATES = ["pending", "admitted", "running", "preempted", "succeeded", "failed", "cancelled", "timeout"]


def typed(value: Any) -> Any:
    """``value`` with every number tagged by its JSON type (1 and 1.0 differ) and every object's key order kept."""
    if isinstance(value, dict):
        return ("object", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [typed(v) for v in value])
    return (type(value).__name__, value)


def reference(row: t.Job, project: str, user: str, node_names: list[str]) -> JobPublic:
    """The model of one job as the list route built it from ORM rows before the fast path (the contract)."""
    spec, placement = row.spec, row.placement or {}
    nodes = [
        NodePublic(node=node_names[n] if n < len(node_names) else str(n), gpus=list(g), gpu_milli=m)
        for n, g, m, _c, _mem in placement.get("shares", [])
    ]
    return JobPublic(
        id=row.id, project=project, user=user, name=row.name, state=row.state, reason_code=row.reason_code,
        reason=row.reason, expected_start_s=row.expected_start_s, expected_start_why=row.expected_start_why or "",
        submitted_at_s=row.submitted_at_s, admitted_at_s=row.admitted_at_s, started_at_s=row.started_at_s,
        ended_at_s=row.ended_at_s, exit_code=row.exit_code, attempt=row.attempt, gpus=int(spec.get("gpus", 1)),
        gpu_milli=int(spec.get("gpu_milli", 1000)), time_limit_s=float(spec["time_limit_s"]),
        priority=str(spec.get("priority", "normal")), pool=placement.get("pool"), nodes=nodes,
        cancel_requested=row.cancel_requested, spec=spec, stdout_path=row.stdout_path or "",
        stderr_path=row.stderr_path or "", array_job_id=row.array_job_id, array_task_id=row.array_task_id,
        display_id=f"{row.array_job_id}_{row.array_task_id}" if row.array_job_id is not None else str(row.id),
        held_by=row.held_by or "", dependency=row.dependency or "", begin_s=row.begin_at_s,
    )  # fmt: skip


def _references(api: Api) -> dict[int, Any]:
    names = list(api.rt.controller.node_names)
    out: dict[int, Any] = {}
    with api.rt.sessions() as s:
        users = {u.id: u.name for u in s.query(t.User)}
        projects = {p.id: p.name for p in s.query(t.Project)}
        for row in s.query(t.Job):
            model = reference(row, projects[row.project_id], users.get(row.user_id, ""), names)
            out[row.id] = json.loads(model.model_dump_json())
    return out


def _variety(w: World) -> None:
    """Jobs of every shape the list shows, next to the world's finished and pending ones."""
    api, member = w.api, w.token("member", "snu-vision")
    first = w.submit(member, "vision-lab", name="训练-ü run", gpus=2, gpu_models=["H100"])
    w.submit(member, "vision-lab", name="tasks", array="0-4%2", command="echo $KFABRIC_ARRAY_TASK_ID")
    w.submit(member, "vision-lab", name="held", hold=True, priority="low", restart_cost_s=12.5)
    w.submit(member, "vision-lab", name="after", dependency=f"afterok:{first}", kill_on_invalid_dep=False)
    w.submit(member, "vision-lab", name="later", begin_s=api.clock.now + 86_400.0, env={"A": "1", "B": "x y"})
    w.submit(member, "vision-lab", name="half", gpus=1, gpu_milli=500, runtime_estimate_s=600.0)
    doomed = w.submit(w.token("member", "tinyml"), "tinyml-llm", name="doomed")
    assert api.post(f"/v1/jobs/{doomed}/cancel", w.token("member", "tinyml")).status_code == 200
    api.tick(1.0, times=2)  # admitted and running jobs with placements (and pending ones with reasons)


def _listed(api: Api, token: str, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/jobs", token, params={"state": ALL_STATES, "limit": 10_000, **params})
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()
    return jobs


def test_every_listed_job_is_exactly_its_model(api: Api, world: World) -> None:
    _variety(world)
    listed = _listed(api, api.operator)
    expected = _references(api)
    assert [j["id"] for j in listed] == sorted(expected)
    shapes = {"array": False, "held": False, "dependency": False, "nodes": False, "exit_code": False,
              "none_start": False, "begin": False}  # fmt: skip
    for job in listed:
        assert typed(job) == typed(expected[job["id"]]), job["id"]
        shown = api.get(f"/v1/jobs/{job['id']}", api.operator).json()
        assert typed(job) == typed(shown), job["id"]
        shapes["array"] |= job["array_job_id"] is not None
        shapes["held"] |= job["held_by"] != ""
        shapes["dependency"] |= job["dependency"] != ""
        shapes["nodes"] |= bool(job["nodes"])
        shapes["exit_code"] |= job["exit_code"] is not None
        shapes["none_start"] |= job["started_at_s"] is None
        shapes["begin"] |= job["begin_s"] is not None
    assert all(shapes.values()), shapes  # the variety really was listed
    assert {j["state"] for j in listed} >= {"pending", "succeeded", "cancelled"}
    assert len({j["state"] for j in listed} & {"admitted", "running"}) >= 1


def test_filters_and_pages_list_the_same_objects(api: Api, world: World) -> None:
    _variety(world)
    expected = _references(api)
    member = world.token("member", "snu-vision")
    name = api.get("/v1/whoami", member).json()["name"]
    mine = _listed(api, member, user=[name])
    assert mine and all(j["user"] == name and j["project"] == "vision-lab" for j in mine)
    assert all(typed(j) == typed(expected[j["id"]]) for j in mine)
    # a member sees only its projects' jobs; pages of 2 add up to the whole list
    seen = _listed(api, member)
    assert {j["project"] for j in seen} == {"vision-lab"}
    paged: list[dict[str, Any]] = []
    while True:
        page = _listed(api, member, limit=2, after_id=paged[-1]["id"] if paged else 0)
        if not page:
            break
        paged.extend(page)
    assert paged == seen
    assert _listed(api, world.token("reviewer")) == []
