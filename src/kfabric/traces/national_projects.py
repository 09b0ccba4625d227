"""Who submits the synthetic national workload (:mod:`kfabric.traces.national`): the scenario's projects plus
synthetic ones, sorted into the kinds of work that load the fleet.

**Tenants.** Four kinds of work, each a *stream* of jobs:

- ``fm`` — foundation-model teams: the projects holding a grant of a program whose name or description says
  foundation model / FM / sovereign AI (korea-2030: ``sovereign-fm``'s five teams). 512-4,096-GPU jobs (rounded
  up to NVLink-domain multiples, e.g. 576 = 8 NVL72 racks) running days to weeks, restricted to the models their
  grants reserve, minimum topology the tightest domain that holds them on every allowed pool (UNIT for 576 on
  NVL72, CLUSTER for 512+ on HGX), a checkpoint every 1-3 h, priority HIGH. One stream per team; its offered
  load is 90% of its reserved GPUs (1,024 when it reserves none). Warm start (the trace begins mid-program):
  besides its Poisson arrivals, each team submits within the first hour as many jobs as its stream holds in
  steady state (M/G/inf: Poisson with mean target GPUs / mean job GPUs, about 1 at scale 1).
- ``grant`` — hundreds of grant projects: the scenario's other projects plus synthetic universities, institutes
  and start-ups (``syn-univ-007-p2``...; about one project per 200 public GPUs, 10-400) under the scenario's
  public programs they are eligible for. 8-256 GPUs, hours to days.
- ``small`` — the same projects' thousands of users (3-30 each): 1-8-GPU jobs (minutes to hours) and fractional
  250/500-milli notebooks and inference (30% of those not preemptible).
- ``owner`` — private AI-factory owners (``scenario.fleet.owners`` of kind private) keeping their own dedicated
  and lendable pools busy: the enterprise projects whose grants all come from one private owner's program, plus
  synthetic ``<owner>-team-N`` projects up to 3 per owner. Jobs restricted to the owner's GPU models,
  classification ``internal``, ``TenantInfo.affiliation`` = the owner.

Program and organization come from the scenario where the project exists; a project's weight is the sum of its
grants' weights in that program; users are ``uNN@<project>``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from kfabric.model import Grant, NodePool, OrgKind, OwnerKind, Sharing
from kfabric.scenarios.loader import Scenario
from kfabric.sched.fairshare import TenantInfo

_FM_PATTERN = re.compile(r"foundation|sovereign[- ]ai|(^|[^a-z])fm([^a-z]|$)")


@dataclass
class NationalProject:
    """One tenant of the workload: its kind of work, users, GPU models and the pools its streams load."""

    info: TenantInfo
    kind: str  # fm | grant | owner
    users: list[str]
    models: tuple[str, ...] = ()  # reserved (fm, grant) or owned (owner) GPU models
    reserved_gpus: int = 0
    pools: list[NodePool] = field(default_factory=list)  # the pools its streams load


def public_pools(scenario: Scenario, pools: list[NodePool]) -> list[NodePool]:
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    return [p for p in pools if p.owner not in private or p.sharing is Sharing.SHARED]


def _users(rng: np.random.Generator, project: str, members: tuple[str, ...], low: int, high: int) -> list[str]:
    n = max(len(members), int(rng.integers(low, high + 1)))
    return list(members) + [f"u{k:02d}@{project}" for k in range(len(members), n)]


def build_projects(
    scenario: Scenario, pools: list[NodePool], rng: np.random.Generator, on: date | None
) -> list[NationalProject]:
    """The scenario's projects sorted into fm / grant / owner, plus synthetic grant and owner projects.
    With a date ``on``, a scenario project takes part only if one of its grants is in force then (the
    service refuses submissions of projects without one); without a date, every project takes part."""
    programs = {p.name: p for p in scenario.programs}
    orgs = {o.name: o for o in scenario.organizations}
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    public = public_pools(scenario, pools)
    owned = {o: [p for p in pools if p.owner == o and p not in public] for o in sorted(private)}
    fm_programs = {n for n, p in programs.items() if _FM_PATTERN.search(f"{n} {p.description}".lower())}
    grants: dict[str, list[Grant]] = defaultdict(list)
    for g in scenario.grants:
        grants[g.project].append(g)
    out: list[NationalProject] = []
    for proj in scenario.projects:
        gs = grants.get(proj.name, [])
        if on is not None and gs:
            gs = [g for g in gs if g.start <= on < g.end]
            if not gs:
                continue
        fm = [g for g in gs if g.program in fm_programs]
        owners = {programs[g.program].owner for g in gs}
        kind_org = orgs[proj.organization].kind if proj.organization in orgs else None
        if fm:
            kind, main, users = "fm", fm, _users(rng, proj.name, proj.members, 8, 20)
        elif gs and len(owners) == 1 and owners <= private and kind_org is OrgKind.ENTERPRISE:
            kind, main, users = "owner", gs, _users(rng, proj.name, proj.members, 10, 40)
        else:
            kind, main, users = "grant", gs, _users(rng, proj.name, proj.members, 3, 30)
        main = sorted(main, key=lambda g: (-g.reserved_gpus, -g.credit_su_hours, g.id))
        program = main[0].program if main else "unfunded"
        weight = sum(g.weight for g in main if g.program == program) or 1.0
        pw = programs[program].weight if program in programs else 1.0
        owner = programs[program].owner if kind == "owner" else ""
        models = tuple(sorted({g.reserved_model for g in main if g.reserved_model}))
        project_pools = owned.get(owner, []) if kind == "owner" else public
        if kind == "owner":
            models = tuple(sorted({p.gpu_model for p in project_pools}))
        info = TenantInfo(proj.name, proj.organization, program, weight, pw, owner)
        reserved = max((g.reserved_gpus for g in main), default=0)
        out.append(NationalProject(info, kind, users, models, reserved, project_pools))
    out.extend(_synthetic_grant_projects(scenario, public, fm_programs, rng))
    for owner, owner_pools in owned.items():
        if not owner_pools:
            continue
        have = sum(1 for p in out if p.kind == "owner" and p.info.affiliation == owner)
        program = next((p.name for p in scenario.programs if p.owner == owner), f"{owner}-pool")
        pw = programs[program].weight if program in programs else 1.0
        models = tuple(sorted({p.gpu_model for p in owner_pools}))
        for k in range(have + 1, 4):
            name = f"{owner}-team-{k}"
            info = TenantInfo(name, f"{owner}-group", program, 1.0, pw, owner)
            out.append(NationalProject(info, "owner", _users(rng, name, (), 10, 40), models, 0, owner_pools))
    return out


def _synthetic_grant_projects(
    scenario: Scenario, public: list[NodePool], fm_programs: set[str], rng: np.random.Generator
) -> list[NationalProject]:
    gpus = sum(p.gpus for p in public)
    if gpus == 0:
        return []
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    eligible = {
        kind: sorted(
            p.name
            for p in scenario.programs
            if p.name not in fm_programs and p.owner not in private and kind in p.rules.eligible_kinds
        )
        for kind in (OrgKind.UNIVERSITY, OrgKind.INSTITUTE, OrgKind.STARTUP)
    }
    weights = {p.name: p.weight for p in scenario.programs}
    wanted = int(min(400, max(10, round(gpus / 200))))
    out: list[NationalProject] = []
    counter: dict[str, int] = defaultdict(int)
    while len(out) < wanted:
        kind = (OrgKind.UNIVERSITY, OrgKind.INSTITUTE, OrgKind.STARTUP)[int(rng.choice(3, p=[0.45, 0.2, 0.35]))]
        tag = {"university": "univ", "institute": "inst", "startup": "startup"}[kind.value]
        counter[tag] += 1
        org = f"syn-{tag}-{counter[tag]:03d}"
        choices = eligible[kind]
        for j in range(1, int(rng.integers(1, 5)) + 1):
            if len(out) >= wanted:
                break
            program = choices[int(rng.integers(len(choices)))] if choices else "synthetic-grants"
            name = f"{org}-p{j}"
            info = TenantInfo(name, org, program, 1.0, weights.get(program, 1.0), "")
            out.append(NationalProject(info, "grant", _users(rng, name, (), 3, 30), (), 0, public))
    return out
