"""Turn a scenario's tenancy (organizations, projects, programs, grants) into the core's inputs."""

from __future__ import annotations

import math
from datetime import date

from kfabric.scenarios.loader import Scenario
from kfabric.sched.fairshare import TenantInfo
from kfabric.sched.snapshot import GrantState
from kfabric.sim.workload import Workload

DAY_S = 86_400.0


def tenants_of(scenario: Scenario) -> dict[str, TenantInfo]:
    """One fair-share leaf per project: its program is that of its first grant, its weight the grants' sum."""
    programs = {p.name: p for p in scenario.programs}
    owners = {o.name for o in scenario.fleet.owners}
    out: dict[str, TenantInfo] = {}
    for project in scenario.projects:
        grants = [g for g in scenario.grants if g.project == project.name]
        program = programs.get(grants[0].program) if grants else None
        out[project.name] = TenantInfo(
            project=project.name,
            organization=project.organization,
            program=program.name if program else "-",
            weight=sum(g.weight for g in grants) or 1.0,
            program_weight=program.weight if program else 1.0,
            affiliation=program.owner if program and program.owner in owners else "",
        )
    return out


def grants_of(scenario: Scenario, start: date) -> dict[str, GrantState]:
    """Grants on the simulation clock (seconds from ``start``), with their program's rules."""
    programs = {p.name: p for p in scenario.programs}
    out: dict[str, GrantState] = {}
    for g in scenario.grants:
        rules = programs[g.program].rules
        out[g.id] = GrantState(
            id=g.id,
            project=g.project,
            start_s=(g.start - start).days * DAY_S,
            end_s=(g.end - start).days * DAY_S,
            reserved_model=g.reserved_model,
            reserved_gpus=g.reserved_gpus,
            credit_left_su=g.credit_su_hours if g.credit_su_hours > 0 else None,
            on_exhausted=rules.on_exhausted,
            max_job_duration_s=rules.max_job_duration_s,
            utilization_floor_pct=rules.utilization_floor_pct,
        )
    return out


def open_grants(workload: Workload, grants: dict[str, GrantState]) -> dict[str, GrantState]:
    """Workload projects the scenario gives no grant (a trace's VCs, synthetic users) get an open-ended one
    (no reservation, no credit limit), so that they run under the same rules as everyone else."""
    covered = {g.project for g in grants.values()}
    projects = sorted({sj.job.project for sj in workload.jobs} - covered)
    return {f"open:{p}": GrantState(id=f"open:{p}", project=p, start_s=-math.inf, end_s=math.inf) for p in projects}
