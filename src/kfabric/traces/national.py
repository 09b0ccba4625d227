"""A synthetic national workload for a scenario (built for korea-2030; works for any scenario).

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
grants' weights in that program. Job names repeat per project (each project has a few named job *templates*
with a fixed size and a typical run time; a rerun varies by a factor ``exp(N(0, 0.35))``), so history-based
estimators have something to learn; users are ``uNN@<project>``.

**Sizes and run times** (GPUs with probabilities; run time lognormal, median and log-sigma, clipped; each
template draws its median, reruns vary around it, the total sigma is the one given):

- fm: 512 .40, 1024 .35, 2048 .17, 4096 .08; 3 d, 0.7, 12 h-21 d;
- grant: 8 .30, 16 .25, 32 .20, 64 .13, 128 .08, 256 .04; 8 h, 1.1, 30 min-7 d;
- small: 1 .62, 2 .14, 4 .12, 8 .12; 45 min, 1.5, 1 min-3 d;
- fractional: 250 milli .6, 500 milli .4 of one GPU; 1.5 h, 1.0, 5 min-24 h;
- owner: 8 .25, 16 .20, 32 .20, 64 .15, 128 .10, 256 .06, 512 .03, 1024 .01; 4 h, 1.3, 10 min-14 d.

Calibrated to the shape of published traces:

- Jeon et al., "Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads" (Philly, ATC'19):
  most jobs use one GPU while the few multi-node jobs take a large share of GPU time; run times from minutes to
  weeks (heavy tail) -> 1-GPU jobs are the most frequent, fm/grant/owner jobs hold most GPU-hours.
- Weng et al., "MLaaS in the Wild" (Alibaba PAI, 6,742 GPUs, >1,300 users, NSDI'22): heavy-tailed durations, many
  tasks ask for a fraction of a GPU (inference, notebooks); openb (Weng et al., ATC'23) shows 44% of its GPU
  pods fractional -> the fractional stream, lognormal sigma >= 1.
- Hu et al., "Characterization and Prediction of DL Workloads in Large-Scale GPU Datacenters" (Helios, SC'21,
  3.36 M jobs over 6 months): single-GPU and short (debugging) jobs dominate counts, users rerun similar jobs
  (what makes QSSF's history-based prediction work), strong diurnal submission pattern -> named templates,
  diurnal arrivals. Parameters are ours, chosen to match these shapes, not fitted.

**Classification**: fm restricted 25% / confidential 45% / internal 30%; grant public 55% / internal 35% /
confidential 10%; small public 75% / internal 25%; owner internal. A class above the highest clearance of the
sites that host the job's allowed pools is lowered to it (korea-2030's B200 sites are cleared to confidential,
so B200-bound fm work is at most confidential).

**Arrivals**: per stream a Poisson process thinned by ``m(t) = (1 + a cos(2 pi (h - 15) / 24)) w(d) / mean(w)``,
``h`` the hour in KST (t = 0 is a Monday 00:00 KST), peak at 15:00, ``w = 0.6`` on weekends (40% fewer) and 1 on
weekdays (a, weekend w: grant 0.4, 0.6; small 0.6, 0.6; owner 0.3, 0.8; fm flat). ``m`` averages 1 over a week.

**Offered load**: with C the GPUs of the pools online on ``on`` (all pools when None), public pools (government
owners, or sharing ``shared``) and each private owner's own pools are loaded separately to ``load`` (default
0.85): fm streams take 90% of their reservations (at most half of the public target), the rest of the public
target goes 65% to ``grant`` and 35% to ``small``; each owner stream gets ``load`` x its pools' GPUs. A stream's
rate is ``scale x target GPUs / E[GPU-seconds per job]``, the expectation computed exactly over its templates
(clipped lognormal). Job sizes are capped at the largest cluster of their allowed pools. Expected and realized
offered load are in ``Workload.description``. Generation is vectorized (:func:`national_arrays`); Job objects
are built afterwards. Time limits: :func:`kfabric.traces.philly.user_time_limits`.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from kfabric.model import Classification, Grant, MinTopology, NodePool, OrgKind, OwnerKind, PriorityClass, Sharing
from kfabric.model.job import MILLI_PER_GPU, Job
from kfabric.scenarios.loader import Scenario
from kfabric.sched.fairshare import TenantInfo
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.philly import DAY_S, HOUR_S, user_time_limits

DEFAULT_LOAD = 0.85
FM_UTILIZATION = 0.9
WITHIN_SIGMA = 0.35
PEAK_HOUR_KST = 15.0
_FM_PATTERN = re.compile(r"foundation|sovereign[- ]ai|(^|[^a-z])fm([^a-z]|$)")
_T = TypeVar("_T")


@dataclass(frozen=True)
class JobClass:
    """How one kind of job is drawn (see the module docstring)."""

    gpus: tuple[int, ...]
    gpu_p: tuple[float, ...]
    median_s: float
    sigma: float
    lo_s: float
    hi_s: float
    words: tuple[str, ...]
    classification_p: tuple[float, float, float, float]  # public, internal, confidential, restricted
    milli: tuple[int, ...] = (MILLI_PER_GPU,)
    milli_p: tuple[float, ...] = (1.0,)
    checkpoints_s: tuple[float, ...] = ()
    checkpoint_p: float = 0.0
    topology_p: float = 0.0
    priority: PriorityClass = PriorityClass.NORMAL
    non_preemptible_p: float = 0.0
    restart_s: float = 60.0


CLASSES: dict[str, JobClass] = {
    "fm": JobClass(
        gpus=(512, 1024, 2048, 4096),
        gpu_p=(0.40, 0.35, 0.17, 0.08),
        median_s=3 * DAY_S,
        sigma=0.7,
        lo_s=12 * HOUR_S,
        hi_s=21 * DAY_S,
        words=("pretrain", "continued-pretrain", "long-context", "sft", "rlhf", "multimodal"),
        classification_p=(0.0, 0.30, 0.45, 0.25),
        checkpoints_s=(3600.0, 7200.0, 10800.0),
        checkpoint_p=1.0,
        topology_p=1.0,
        priority=PriorityClass.HIGH,
        non_preemptible_p=0.3,
        restart_s=900.0,
    ),
    "grant": JobClass(
        gpus=(8, 16, 32, 64, 128, 256),
        gpu_p=(0.30, 0.25, 0.20, 0.13, 0.08, 0.04),
        median_s=8 * HOUR_S,
        sigma=1.1,
        lo_s=1800.0,
        hi_s=7 * DAY_S,
        words=("train", "finetune", "pretrain-small", "sweep", "distill", "eval"),
        classification_p=(0.55, 0.35, 0.10, 0.0),
        checkpoints_s=(1800.0, 3600.0),
        checkpoint_p=0.7,
        topology_p=0.6,
        non_preemptible_p=0.05,
        restart_s=300.0,
    ),
    "small": JobClass(
        gpus=(1, 2, 4, 8),
        gpu_p=(0.62, 0.14, 0.12, 0.12),
        median_s=45 * 60.0,
        sigma=1.5,
        lo_s=60.0,
        hi_s=3 * DAY_S,
        words=("train", "finetune", "debug", "eval", "preprocess", "ablation"),
        classification_p=(0.75, 0.25, 0.0, 0.0),
        checkpoints_s=(1800.0,),
        checkpoint_p=0.4,
        topology_p=0.8,
        non_preemptible_p=0.05,
    ),
    "fractional": JobClass(
        gpus=(1,),
        gpu_p=(1.0,),
        median_s=1.5 * HOUR_S,
        sigma=1.0,
        lo_s=300.0,
        hi_s=DAY_S,
        words=("notebook", "infer", "serve-demo", "embed"),
        classification_p=(0.75, 0.25, 0.0, 0.0),
        milli=(250, 500),
        milli_p=(0.6, 0.4),
        non_preemptible_p=0.3,
        restart_s=30.0,
    ),
    "owner": JobClass(
        gpus=(8, 16, 32, 64, 128, 256, 512, 1024),
        gpu_p=(0.25, 0.20, 0.20, 0.15, 0.10, 0.06, 0.03, 0.01),
        median_s=4 * HOUR_S,
        sigma=1.3,
        lo_s=600.0,
        hi_s=14 * DAY_S,
        words=("train", "finetune", "sim", "perception", "eval", "distill", "pretrain", "batch-infer"),
        classification_p=(0.0, 1.0, 0.0, 0.0),
        checkpoints_s=(1800.0, 3600.0, 7200.0),
        checkpoint_p=0.6,
        topology_p=0.6,
        non_preemptible_p=0.1,
        restart_s=300.0,
    ),
}
#: stream kind -> (diurnal amplitude, weekend factor)
MODULATION: dict[str, tuple[float, float]] = {
    "fm": (0.0, 1.0),
    "grant": (0.4, 0.6),
    "small": (0.6, 0.6),
    "owner": (0.3, 0.8),
}
#: templates per project and class
TEMPLATES = {"fm": 6, "grant": 5, "small": 5, "fractional": 3, "owner": 10}


@dataclass
class _Project:
    info: TenantInfo
    kind: str  # fm | grant | owner
    users: list[str]
    models: tuple[str, ...] = ()  # reserved (fm, grant) or owned (owner) GPU models
    reserved_gpus: int = 0
    pools: list[NodePool] = field(default_factory=list)  # the pools its streams load


@dataclass
class NationalArrays:
    """The vectorized workload: one row per job (sorted by arrival) and one per job template."""

    submit_s: npt.NDArray[np.float64]
    run_s: npt.NDArray[np.float64]
    time_limit_s: npt.NDArray[np.float64]
    template: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]  # index into ``users``
    templates: list[dict[str, object]]  # Job keyword arguments shared by a template's jobs (incl. project)
    template_class: list[str]
    users: list[str]
    tenants: dict[str, TenantInfo]
    capacity_gpus: int
    target_gpus: float
    description: str = ""


def national_arrays(
    scenario: Scenario, days: float, seed: int, scale: float = 1.0, load: float = DEFAULT_LOAD, on: date | None = None
) -> NationalArrays:
    """Draw the workload as arrays (fast: ~1 M jobs in a few seconds); :func:`synthetic_national` builds jobs."""
    if not days > 0 or not math.isfinite(days):
        raise ValueError(f"synthetic_national: days must be > 0, got {days} (fix: pass e.g. days=7)")
    if scale < 0 or not math.isfinite(scale):
        raise ValueError(f"synthetic_national: scale must be >= 0, got {scale} (fix: pass e.g. scale=1.0)")
    pools = list(scenario.fleet.pools_online(on))
    if not pools:
        raise ValueError(f"synthetic_national: no pool of {scenario.name} is online on {on} (fix: pass a later date)")
    rng = np.random.default_rng([seed, 1])
    projects = _projects(scenario, pools, rng, on)
    builder = _TemplateBuilder(scenario, rng)
    streams: list[tuple[str, list[int], float]] = []  # (kind, template ids, target GPUs)
    public_gpus = sum(p.gpus for p in _public_pools(scenario, pools))
    fm = [p for p in projects if p.kind == "fm" and p.pools]
    fm_targets = [FM_UTILIZATION * (p.reserved_gpus or min(1024, public_gpus)) for p in fm]
    cap = 0.5 * load * public_gpus
    if sum(fm_targets) > cap:
        fm_targets = [t * cap / sum(fm_targets) for t in fm_targets]
    for p, target in zip(fm, fm_targets, strict=True):
        streams.append(("fm", builder.add(projects.index(p), p, "fm", TEMPLATES["fm"], 1.0), target))
    rest = max(0.0, load * public_gpus - sum(fm_targets))
    grant = [i for i, p in enumerate(projects) if p.kind == "grant" and p.pools]
    activity = rng.lognormal(0.0, 1.0, size=len(projects))
    for kind, share, classes in (("grant", 0.65, ("grant",)), ("small", 0.35, ("small", "fractional"))):
        ids = [t for i in grant for c in classes for t in builder.add(i, projects[i], c, TEMPLATES[c], activity[i])]
        streams.append((kind, ids, share * rest))
    by_owner: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(projects):
        if p.kind == "owner" and p.pools:
            by_owner[p.info.affiliation].append(i)
    for _owner, members in sorted(by_owner.items()):
        ids = [t for i in members for t in builder.add(i, projects[i], "owner", TEMPLATES["owner"], activity[i])]
        streams.append(("owner", ids, load * sum(p.gpus for p in projects[members[0]].pools)))
    arrays = _arrivals(streams, builder, days * DAY_S, scale, np.random.default_rng([seed, 2]))
    users: list[str] = []
    offsets = []
    for p in projects:
        offsets.append(len(users))
        users.extend(p.users)
    tpl_project = np.array(builder.project, dtype=np.int64)
    n_users = np.array([len(p.users) for p in projects])[tpl_project]
    first = np.array(offsets)[tpl_project]
    submit, run, tpl = arrays
    pick = np.random.default_rng([seed, 3]).random(len(tpl))
    user = first[tpl] + (pick * n_users[tpl]).astype(np.int64)
    limits = user_time_limits(run, seed)
    capacity = sum(p.gpus for p in pools)
    target = sum(t for _, _, t in streams) * scale
    horizon = days * DAY_S
    gpu_seconds = float(np.sum(np.minimum(run, horizon - submit) * builder.gpu_equivalent()[tpl]))
    tenants = {p.info.project: p.info for p in projects if p.pools}  # every project that may submit
    counts = {c: int(np.count_nonzero(np.array(builder.cls)[tpl] == c)) for c in CLASSES} if len(tpl) else {}
    description = (
        f"synthetic national workload for {scenario.name}: {len(tpl)} jobs over {days:g} d, seed {seed}, "
        f"scale {scale:g}; {capacity} GPUs online ({on or 'all pools'}); offered load target "
        f"{target / capacity:.1%}, realized {gpu_seconds / (capacity * horizon):.1%} (work inside the window); "
        f"jobs by class {counts}; projects {len(tenants)}, users {len(set(user.tolist()))}"
    )
    return NationalArrays(
        submit, run, limits, tpl, user, builder.kwargs, builder.cls, users, tenants, capacity, target, description
    )


def synthetic_national(
    scenario: Scenario, days: float, seed: int, scale: float = 1.0, load: float = DEFAULT_LOAD, on: date | None = None
) -> Workload:
    """The synthetic national workload as ``SimJob``s sorted by arrival (module docstring for every rule)."""
    a = national_arrays(scenario, days, seed, scale, load, on)
    kwargs, users = a.templates, a.users
    columns = (a.submit_s.tolist(), a.run_s.tolist(), a.time_limit_s.tolist(), a.template.tolist(), a.user.tolist())
    enabled = gc.isenabled()
    gc.disable()  # millions of new objects, no cycles: generational GC passes would only rescan them
    try:
        jobs = [
            SimJob(Job(id=f"nat-{i:07d}", time_limit_s=limit, user=users[u], submit_s=submit, **kwargs[t]), run)
            for i, (submit, run, limit, t, u) in enumerate(zip(*columns, strict=True))
        ]
    finally:
        if enabled:
            gc.enable()
    return Workload(name=f"national-{scenario.name}", jobs=jobs, tenants=a.tenants, description=a.description)


# ---- tenants ---------------------------------------------------------------------------------------------------


def _public_pools(scenario: Scenario, pools: list[NodePool]) -> list[NodePool]:
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    return [p for p in pools if p.owner not in private or p.sharing is Sharing.SHARED]


def _users(rng: np.random.Generator, project: str, members: tuple[str, ...], low: int, high: int) -> list[str]:
    n = max(len(members), int(rng.integers(low, high + 1)))
    return list(members) + [f"u{k:02d}@{project}" for k in range(len(members), n)]


def _projects(scenario: Scenario, pools: list[NodePool], rng: np.random.Generator, on: date | None) -> list[_Project]:
    """The scenario's projects sorted into fm / grant / owner, plus synthetic grant and owner projects.
    With a date ``on``, a scenario project takes part only if one of its grants is in force then (the
    service refuses submissions of projects without one); without a date, every project takes part."""
    programs = {p.name: p for p in scenario.programs}
    orgs = {o.name: o for o in scenario.organizations}
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    public = _public_pools(scenario, pools)
    owned = {o: [p for p in pools if p.owner == o and p not in public] for o in sorted(private)}
    fm_programs = {n for n, p in programs.items() if _FM_PATTERN.search(f"{n} {p.description}".lower())}
    grants: dict[str, list[Grant]] = defaultdict(list)
    for g in scenario.grants:
        grants[g.project].append(g)
    out: list[_Project] = []
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
        out.append(_Project(info, kind, users, models, reserved, project_pools))
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
            out.append(_Project(info, "owner", _users(rng, name, (), 10, 40), models, 0, owner_pools))
    return out


def _synthetic_grant_projects(
    scenario: Scenario, public: list[NodePool], fm_programs: set[str], rng: np.random.Generator
) -> list[_Project]:
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
    out: list[_Project] = []
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
            out.append(_Project(info, "grant", _users(rng, name, (), 3, 30), (), 0, public))
    return out


# ---- templates -------------------------------------------------------------------------------------------------


def _tightest(gpus: int, pools: list[NodePool]) -> MinTopology:
    """The smallest domain that holds ``gpus`` on every one of ``pools`` (so the job may go to any of them)."""
    level = MinTopology.NODE
    for p in pools:
        if gpus <= p.gpus_per_node:
            here = MinTopology.NODE
        elif gpus <= p.nvlink_domain_gpus:
            here = MinTopology.NVLINK
        elif gpus <= p.gpus_per_node * p.nodes_per_rack:
            here = MinTopology.RACK
        elif gpus <= min(p.gpus, p.gpus_per_node * p.nodes_per_unit):
            here = MinTopology.UNIT
        else:
            here = MinTopology.CLUSTER
        level = max(level, here)
    return level


def _pick(values: tuple[_T, ...], probabilities: tuple[float, ...], u: float) -> _T:
    """The value whose cumulative-probability slot holds ``u`` (u in [0, 1))."""
    return values[min(bisect.bisect_right(list(itertools.accumulate(probabilities)), u), len(values) - 1)]


@dataclass(frozen=True)
class _Allowed:
    """What a set of pools allows a template: the pools, their largest NVLink domain and cluster, clearance."""

    pools: list[NodePool]
    domain: int
    cap: int
    clearance: Classification


class _TemplateBuilder:
    """Job templates (name, size, typical run time, constraints) as parallel lists."""

    def __init__(self, scenario: Scenario, rng: np.random.Generator) -> None:
        self.fleet = scenario.fleet
        self.rng = rng
        self.project: list[int] = []
        self.cls: list[str] = []
        self.weight: list[float] = []
        self.gpus: list[int] = []
        self.milli: list[int] = []
        self.median_s: list[float] = []
        self.kwargs: list[dict[str, object]] = []
        self._allowed: dict[tuple[int, tuple[str, ...]], _Allowed] = {}

    def gpu_equivalent(self) -> npt.NDArray[np.float64]:
        gpus = np.array(self.gpus, dtype=np.float64)
        return np.asarray(gpus * np.array(self.milli, dtype=np.float64) / MILLI_PER_GPU, dtype=np.float64)

    def allowed(self, pools: list[NodePool], models: tuple[str, ...]) -> _Allowed:
        key = (id(pools), models)
        if key not in self._allowed:
            chosen = [p for p in pools if not models or p.gpu_model in models]
            clusters: dict[str, int] = defaultdict(int)
            for p in chosen:
                clusters[p.cluster] += p.gpus
            self._allowed[key] = _Allowed(
                chosen,
                max((p.nvlink_domain_gpus for p in chosen), default=1),
                max(clusters.values(), default=0),
                max((self.fleet.site_of(p).clearance for p in chosen), default=Classification.PUBLIC),
            )
        return self._allowed[key]

    def add(self, index: int, project: _Project, cls: str, count: int, activity: float) -> list[int]:
        rng, c = self.rng, CLASSES[cls]
        zipf = 1.0 / (1.0 + rng.permutation(count))
        sigma = math.sqrt(c.sigma**2 - WITHIN_SIGMA**2)
        medians = np.clip(rng.lognormal(math.log(c.median_s), sigma, size=count), c.lo_s, c.hi_s).tolist()
        draws = rng.random((count, 9)).tolist()
        ids = []
        for k in range(count):
            u = draws[k]
            models: tuple[str, ...] = ()
            if project.kind == "owner":
                models = project.models
            elif project.models and u[0] < {"fm": 1.0, "grant": 0.8}.get(cls, 0.3):
                models = (project.models[int(u[1] * len(project.models))],)
            allowed = self.allowed(project.pools, models)
            if not allowed.pools:
                models, allowed = (), self.allowed(project.pools, ())
            gpus = _pick(c.gpus, c.gpu_p, u[2])
            if cls == "fm":
                gpus = -(-gpus // allowed.domain) * allowed.domain
            if gpus > allowed.cap:
                smaller = [g for g in c.gpus if g <= allowed.cap]
                gpus = max(smaller) if smaller and cls != "fm" else allowed.cap
            topology = MinTopology.ANY
            if gpus > 1 and u[3] < c.topology_p:
                topology = _tightest(gpus, allowed.pools)
            wanted = _pick(tuple(Classification), c.classification_p, u[4])
            checkpoint = None
            if c.checkpoints_s and u[6] < c.checkpoint_p:
                checkpoint = c.checkpoints_s[int(u[5] * len(c.checkpoints_s))]
            milli = _pick(c.milli, c.milli_p, u[7])
            self.project.append(index)
            self.cls.append(cls)
            self.weight.append(activity * float(zipf[k]))
            self.gpus.append(gpus)
            self.milli.append(milli)
            self.median_s.append(medians[k])
            self.kwargs.append(
                {
                    "project": project.info.project,
                    "name": f"{c.words[k % len(c.words)]}-{k + 1}",
                    "gpus": gpus,
                    "gpu_milli": milli,
                    "gpu_models": models,
                    "min_topology": topology,
                    "priority": c.priority,
                    "preemptible": u[8] >= c.non_preemptible_p,
                    "checkpoint_interval_s": checkpoint,
                    "restart_cost_s": c.restart_s,
                    "classification": min(wanted, allowed.clearance),
                }
            )
            ids.append(len(self.cls) - 1)
        return ids


# ---- arrivals --------------------------------------------------------------------------------------------------


def _modulation(t: npt.NDArray[np.float64], amplitude: float, weekend: float) -> npt.NDArray[np.float64]:
    hour = (t / HOUR_S) % 24.0
    day = (t // DAY_S) % 7
    diurnal = 1.0 + amplitude * np.cos(2 * np.pi * (hour - PEAK_HOUR_KST) / 24.0)
    weekly = np.where(day >= 5, weekend, 1.0) / ((5 + 2 * weekend) / 7)
    return np.asarray(diurnal * weekly, dtype=np.float64)


def _clipped_lognormal_mean(
    median: npt.NDArray[np.float64], lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``E[min(max(X, lo), hi)]`` for ``X = median * exp(N(0, WITHIN_SIGMA))``."""
    s = WITHIN_SIGMA
    mu = np.log(median)
    cdf = np.frompyfunc(lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))), 1, 1)
    a, b = (np.log(lo) - mu) / s, (np.log(hi) - mu) / s
    middle = np.exp(mu + s * s / 2) * (cdf(b - s) - cdf(a - s))
    return np.asarray(lo * cdf(a) + hi * (1 - cdf(b)) + middle, dtype=np.float64)


def _arrivals(
    streams: list[tuple[str, list[int], float]],
    builder: _TemplateBuilder,
    horizon_s: float,
    scale: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``(submit_s, run_s, template)`` of every job, sorted by arrival (ties by stream, then draw order)."""
    lo = np.array([CLASSES[c].lo_s for c in builder.cls])
    hi = np.array([CLASSES[c].hi_s for c in builder.cls])
    median = np.array(builder.median_s)
    mean_run = _clipped_lognormal_mean(median, lo, hi)
    work = builder.gpu_equivalent() * mean_run
    weights = np.array(builder.weight)
    times, templates = [], []
    for kind, ids, target in streams:
        if not ids or target <= 0 or scale <= 0:
            continue
        idx = np.array(ids)
        p = weights[idx] / weights[idx].sum()
        rate = scale * target / float(np.dot(p, work[idx]))
        amplitude, weekend = MODULATION[kind]
        peak = (1 + amplitude) / ((5 + 2 * weekend) / 7)
        n = int(rng.poisson(rate * peak * horizon_s))
        t = rng.uniform(0.0, horizon_s, size=n)
        t = t[rng.random(n) * peak < _modulation(t, amplitude, weekend)]
        if kind == "fm":
            # warm start: an M/G/inf stream holds Poisson(rate * E[run]) = Poisson(target / E[GPUs]) jobs
            warm = int(rng.poisson(scale * target / float(np.dot(p, builder.gpu_equivalent()[idx]))))
            t = np.concatenate([rng.uniform(0.0, min(HOUR_S, horizon_s), size=warm), t])
        times.append(t)
        templates.append(idx[rng.choice(len(idx), size=len(t), p=p)])
    submit = np.concatenate(times) if times else np.zeros(0)
    tpl = np.concatenate(templates).astype(np.int64) if templates else np.zeros(0, dtype=np.int64)
    order = np.argsort(submit, kind="stable")
    submit, tpl = np.round(submit[order], 3), tpl[order]
    run = median[tpl] * np.exp(rng.normal(0.0, WITHIN_SIGMA, size=len(tpl)))
    run = np.round(np.clip(run, lo[tpl], hi[tpl]))
    return submit, run, tpl
