"""A job's submitted fields ⇄ the ``spec`` JSON column, and stored rows ⇄ the core's :class:`Job`."""

from __future__ import annotations

from typing import Any

from kfabric.model.decision import NodeShare, Placement
from kfabric.model.errors import ValidationError
from kfabric.model.job import Job, MinTopology, PriorityClass
from kfabric.model.sovereignty import Classification
from kfabric.store import tables as t

#: the fields a client may set, with their defaults
SPEC_FIELDS: dict[str, Any] = {
    "name": "",
    "gpus": 1,
    "gpu_milli": 1000,
    "nodes": None,
    "gpus_per_node": None,
    "gpu_models": [],
    "min_topology": "any",
    "time_limit_s": None,
    "runtime_estimate_s": None,
    "priority": "normal",
    "preemptible": True,
    "checkpoint_interval_s": None,
    "restart_cost_s": 0.0,
    "classification": "public",
    "cpu_milli": 0,
    "memory_mib": 0,
    "command": "",
    "image": "",
    "env": {},
    "workdir": "",
    # Slurm-style fields (issue 19): output patterns (resolved at launch), and what the job asked of the gate
    # (kfabric.service.eligibility_gate); the gate reads them from the row's columns (:func:`control_columns`)
    "output": "",
    "error": "",
    "array": "",
    "dependency": "",
    "kill_on_invalid_dep": True,
    "hold": False,
    "begin_s": None,
    # notifications (service/notifications.py): Slurm's mail types, the address, a signed webhook
    "mail_type": [],
    "mail_user": "",
    "notify_url": "",
}


def control_columns(spec: dict[str, Any], script: str | None) -> dict[str, Any]:
    """The job row's columns for what ``spec`` asks of the eligibility gate, and its script snapshot (the array
    columns are set where the tasks are inserted)."""
    return {
        "script": script,
        "dependency": str(spec.get("dependency", "")),
        "kill_on_invalid_dep": bool(spec.get("kill_on_invalid_dep", True)),
        "held_by": "user" if spec.get("hold") else "",
        "begin_at_s": spec.get("begin_s"),
    }


def _enum(parse: Any, value: object, where: str) -> Any:
    try:
        return parse(str(value))
    except ValueError as exc:
        raise ValidationError(where, str(exc)) from None


def build_job(job_id: str, project: str, user: str, spec: dict[str, Any], submit_s: float) -> Job:
    """The core's job for ``spec``; raises :class:`ValidationError` naming the bad field."""
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ValidationError(f"job.{unknown[0]}", "unknown field", f"known fields: {', '.join(SPEC_FIELDS)}")
    s = {**SPEC_FIELDS, **spec}
    if s["time_limit_s"] is None:
        raise ValidationError("job.time_limit_s", "is required", "every job needs a time limit, e.g. --time 4:00:00")
    env = s["env"] or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValidationError("job.env", "must map names to string values", 'e.g. {"SEED": "1"}')
    return Job(
        id=job_id,
        project=project,
        user=user,
        name=s["name"],
        time_limit_s=float(s["time_limit_s"]),
        gpus=int(s["gpus"]),
        gpu_milli=int(s["gpu_milli"]),
        nodes=s["nodes"],
        gpus_per_node=s["gpus_per_node"],
        gpu_models=tuple(s["gpu_models"]),
        min_topology=_enum(MinTopology.parse, s["min_topology"], "job.min_topology"),
        submit_s=submit_s,
        runtime_estimate_s=s["runtime_estimate_s"],
        priority=_enum(PriorityClass.parse, s["priority"], "job.priority"),
        preemptible=bool(s["preemptible"]),
        checkpoint_interval_s=s["checkpoint_interval_s"],
        restart_cost_s=float(s["restart_cost_s"]),
        classification=_enum(Classification.parse, s["classification"], "job.classification"),
        cpu_milli=int(s["cpu_milli"]),
        memory_mib=int(s["memory_mib"]),
        command=s["command"],
        image=s["image"],
        env=tuple(sorted(env.items())),
    )


def job_of_row(row: t.Job, project: str, user: str = "") -> Job:
    return build_job(str(row.id), project, user, row.spec, row.submitted_at_s)


def placement_to_json(p: Placement) -> dict[str, Any]:
    return {
        "pool": p.pool,
        "shares": [[s.node, list(s.gpus), s.gpu_milli, s.cpu_milli, s.memory_mib] for s in p.shares],
    }


def placement_of_json(d: dict[str, Any]) -> Placement:
    return Placement(d["pool"], tuple(NodeShare(n, tuple(g), m, c, mem) for n, g, m, c, mem in d["shares"]))
