"""A synthetic national workload for a scenario (built for korea-2030; works for any scenario).

Four kinds of work, each a *stream* of jobs: ``fm`` (foundation-model teams), ``grant`` (grant projects), ``small``
(the same projects' users: 1-8-GPU and fractional jobs) and ``owner`` (private AI-factory owners). The tenants and
their users: :mod:`kfabric.traces.national_projects`; the job templates (sizes, run times, classification) and the
published traces they are calibrated to: :mod:`kfabric.traces.national_templates`. This module draws the arrivals
and builds the jobs.

**Arrivals**: per stream a Poisson process thinned by ``m(t) = (1 + a cos(2 pi (h - 15) / 24)) w(d) / mean(w)``,
``h`` the hour in KST (t = 0 is a Monday 00:00 KST), peak at 15:00, ``w = 0.6`` on weekends (40% fewer) and 1 on
weekdays (a, weekend w: grant 0.4, 0.6; small 0.6, 0.6; owner 0.3, 0.8; fm flat). ``m`` averages 1 over a week.
The diurnal pattern follows Hu et al. (Helios, SC'21), cited in :mod:`kfabric.traces.national_templates`.

**Offered load**: with C the GPUs of the pools online on ``on`` (all pools when None), public pools (government
owners, or sharing ``shared``) and each private owner's own pools (its *segments*) are loaded separately to
``load`` (default 0.85) of what they can deliver: fm streams take 90% of their reservations (at most half of the
public target), the rest of the public target goes 65% to ``grant`` and 35% to ``small``; each owner stream gets
``load`` x its pools' GPUs. Targets are GPUs busy on the segment's own models. Run times are stated on H100
(``REFERENCE_MODEL``); a GPU-second of H100 work keeps a GPU of model M busy ``f(M) = speed(H100) / speed(M)``
seconds (the twin's factor, :class:`kfabric.sim.speed.RunTimeScale`). A template counts its work at
``f_eff = sum(GPUs) / sum(GPUs / f)`` over the pools of its segment it may use (work spread in proportion to
what each pool delivers keeps every pool equally busy). A stream's rate is ``scale x target GPUs /
E[f_eff x GPU-seconds per job]``, the expectation computed exactly over its templates (clipped lognormal). Job
sizes are capped at the largest cluster of their allowed pools. Expected and realized offered load (in segment
time, and in H100 time) are in ``Workload.description``. Generation is vectorized (:func:`national_arrays`); Job
objects are built afterwards.

**Time limits**: a user sets the limit for the slowest GPU model the job may run on: the slowest model of the
pools of the whole fleet (any online date) where the scheduler could place it (the static rules of
:func:`kfabric.sched.eligibility.eligible_pools`: model, clearance, ownership, topology), padded as every trace
pads (:func:`kfabric.traces.philly.user_time_limits`: the smallest standard limit ``>= run x f_max x U``,
``U ~ U[1, 5]``). No job is made to overrun: its run time on every model it may use is within its limit.
"""

from __future__ import annotations

import functools
import gc
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import cast

import numpy as np
import numpy.typing as npt

from kfabric.model.fleet import Fleet, NodePool, Sharing
from kfabric.model.gpu import REFERENCE_MODEL
from kfabric.model.job import Job
from kfabric.scenarios.loader import Scenario
from kfabric.sched.capacity import Capacity, PoolInfo
from kfabric.sched.fairshare import TenantInfo
from kfabric.sched.placement import topology_ok
from kfabric.sim.speed import RunTimeScale
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.national_projects import NationalProject, build_projects, public_pools
from kfabric.traces.national_templates import CLASSES, TEMPLATES, WITHIN_SIGMA, JobClass, TemplateBuilder
from kfabric.traces.philly import DAY_S, HOUR_S, user_time_limits

__all__ = [
    "CLASSES",
    "DEFAULT_LOAD",
    "FM_UTILIZATION",
    "MODULATION",
    "PEAK_HOUR_KST",
    "PUBLIC_SEGMENT",
    "TEMPLATES",
    "WITHIN_SIGMA",
    "JobClass",
    "NationalArrays",
    "national_arrays",
    "synthetic_national",
]

DEFAULT_LOAD = 0.85
#: the segment of the public pools (government-owned or shared); a private owner's segment is named after it
PUBLIC_SEGMENT = "public"
FM_UTILIZATION = 0.9
PEAK_HOUR_KST = 15.0
#: stream kind -> (diurnal amplitude, weekend factor)
MODULATION: dict[str, tuple[float, float]] = {
    "fm": (0.0, 1.0),
    "grant": (0.4, 0.6),
    "small": (0.6, 0.6),
    "owner": (0.3, 0.8),
}


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
    target_gpus: float  # summed stream targets x scale: GPUs busy on the segments' own models
    #: per template: the segment whose target its stream loads (``PUBLIC_SEGMENT`` or a private owner)
    template_segment: list[str]
    #: per template: GPU-seconds of its segment per GPU-second of H100 work (``f_eff``, module docstring)
    segment_factor: npt.NDArray[np.float64]
    #: per template: run time on the slowest model it may run on, per second of H100 run time (``f_max``)
    slowest_factor: npt.NDArray[np.float64]
    segment_gpus: dict[str, int]  # GPUs online per segment
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
    projects = build_projects(scenario, pools, rng, on)
    builder = TemplateBuilder(scenario, rng)
    streams: list[tuple[str, list[int], float]] = []  # (kind, template ids, target GPUs)
    public = public_pools(scenario, pools)
    public_gpus = sum(p.gpus for p in public)
    segment_gpus = {PUBLIC_SEGMENT: public_gpus} if public_gpus else {}
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
    for owner, members in sorted(by_owner.items()):
        ids = [t for i in members for t in builder.add(i, projects[i], "owner", TEMPLATES["owner"], activity[i])]
        segment_gpus[owner] = sum(p.gpus for p in projects[members[0]].pools)
        streams.append(("owner", ids, load * segment_gpus[owner]))
    speeds = _Speeds(scenario.fleet)
    segment_factor = np.array(
        [speeds.segment_factor(builder, projects[i].pools, t) for t, i in enumerate(builder.project)], dtype=np.float64
    )
    slowest = np.array(
        [speeds.slowest_factor(builder, projects[i], t) for t, i in enumerate(builder.project)], dtype=np.float64
    )
    segment = [projects[i].info.affiliation or PUBLIC_SEGMENT for i in builder.project]
    arrays = _arrivals(streams, builder, segment_factor, days * DAY_S, scale, np.random.default_rng([seed, 2]))
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
    # the padding rule of every trace, applied to the run time on the slowest model the job may use
    limits = user_time_limits(run * slowest[tpl], seed)
    capacity = sum(p.gpus for p in pools)
    target = sum(t for _, _, t in streams) * scale
    horizon = days * DAY_S
    gpus = builder.gpu_equivalent()[tpl]
    busy = run * segment_factor[tpl]  # seconds of the segment's GPUs each job keeps busy
    gpu_seconds = float(np.sum(np.minimum(busy, horizon - submit) * gpus))
    h100_seconds = float(np.sum(np.minimum(run, horizon - submit) * gpus))
    tenants = {p.info.project: p.info for p in projects if p.pools}  # every project that may submit
    class_of = np.array([list(CLASSES).index(c) for c in builder.cls], dtype=np.int64)
    per_class = np.bincount(class_of[tpl], minlength=len(CLASSES)) if len(tpl) else None
    counts = {c: int(per_class[k]) for k, c in enumerate(CLASSES)} if per_class is not None else {}
    description = (
        f"synthetic national workload for {scenario.name}: {len(tpl)} jobs over {days:g} d, seed {seed}, "
        f"scale {scale:g}; {capacity} GPUs online ({on or 'all pools'}); offered load target "
        f"{target / capacity:.1%} of GPU time on the models that run it, realized "
        f"{gpu_seconds / (capacity * horizon):.1%} ({h100_seconds / (capacity * horizon):.1%} in H100 time; work "
        "inside the window); "
        f"jobs by class {counts}; projects {len(tenants)}, users {len(np.unique(user))}"
    )
    return NationalArrays(
        submit,
        run,
        limits,
        tpl,
        user,
        builder.kwargs,
        builder.cls,
        users,
        tenants,
        capacity,
        target,
        segment,
        segment_factor,
        slowest,
        segment_gpus,
        description,
    )


def synthetic_national(
    scenario: Scenario, days: float, seed: int, scale: float = 1.0, load: float = DEFAULT_LOAD, on: date | None = None
) -> Workload:
    """The synthetic national workload as ``SimJob``s sorted by arrival (module docstrings for every rule)."""
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
    # run times are stated on H100, the catalog's speed unit; other models scale them (sim.speed, docs/gpu-speeds.md)
    return Workload(
        name=f"national-{scenario.name}",
        jobs=jobs,
        tenants=a.tenants,
        description=a.description,
        reference_model=REFERENCE_MODEL,
    )


# ---- GPU speeds -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _pool_shapes(fleet: Fleet) -> tuple[PoolInfo, ...]:
    """The scheduler's view of the fleet's pools (geometry, site, owner, sharing), for ``topology_ok``."""
    return Capacity(fleet).pools


class _Speeds:
    """Per template: how long its H100 work keeps its segment's GPUs busy, and how long it runs at worst."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # run time on a model per second on H100: the twin's own factor (a national job name is no Gavel job type)
        scale = RunTimeScale(fleet.gpu_models, REFERENCE_MODEL)
        probe = Job(id="probe", project="probe", time_limit_s=1.0)
        self.factor = {m.name: scale.factor(probe, m.name) for m in fleet.gpu_models}
        self._segment: dict[tuple[int, tuple[str, ...]], float] = {}
        self._slowest: dict[tuple[object, ...], float] = {}

    def segment_factor(self, builder: TemplateBuilder, pools: list[NodePool], t: int) -> float:
        """``f_eff`` over the pools of the template's segment it may use: ``sum(GPUs) / sum(GPUs / f)``."""
        models = cast(tuple[str, ...], builder.kwargs[t]["gpu_models"])
        key = (id(pools), models)
        got = self._segment.get(key)
        if got is None:
            allowed = builder.allowed(pools, models).pools or pools
            gpus = sum(p.gpus for p in allowed)
            delivered = sum(p.gpus / self.factor[p.gpu_model] for p in allowed)
            got = self._segment[key] = gpus / delivered if delivered > 0 else 1.0
        return got

    def slowest_factor(self, builder: TemplateBuilder, project: NationalProject, t: int) -> float:
        """``f_max``: the largest factor over the pools of the whole fleet where the scheduler could ever place the
        template's jobs (the static rules of ``sched.eligibility.eligible_pools``, every pool online: GPU model,
        site clearance, dedicated pools for their owner only, topology), else over the pools its stream loads."""
        kw = builder.kwargs[t]
        affiliation = project.info.affiliation
        models = cast(tuple[str, ...], kw["gpu_models"])
        key = (kw["gpus"], kw["gpu_milli"], models, kw["min_topology"], kw["classification"], affiliation)
        got = self._slowest.get(key)
        if got is None:
            job = Job(id="probe", time_limit_s=1.0, **kw)  # type: ignore[arg-type]
            sites = self.fleet.sites
            found = {
                p.model
                for p in _pool_shapes(self.fleet)
                if (p.gpus_per_node > 0 or job.gpus == 0)
                and (not models or p.model in models)
                and sites[p.site].clearance >= job.classification
                and (p.sharing is not Sharing.DEDICATED or p.owner == affiliation)
                and topology_ok(job, p)
            }
            if not found:  # no pool can ever take it (a size no single pool holds): the pools its stream loads
                found = {p.gpu_model for p in builder.allowed(project.pools, models).pools}
            got = self._slowest[key] = max((self.factor[m] for m in found), default=1.0)
        return got


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
    builder: TemplateBuilder,
    segment_factor: npt.NDArray[np.float64],
    horizon_s: float,
    scale: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``(submit_s, run_s, template)`` of every job, sorted by arrival (ties by stream, then draw order).
    Targets are GPUs of the segment busy: a template's work counts at its ``segment_factor``."""
    lo = np.array([CLASSES[c].lo_s for c in builder.cls])
    hi = np.array([CLASSES[c].hi_s for c in builder.cls])
    median = np.array(builder.median_s)
    mean_run = _clipped_lognormal_mean(median, lo, hi)
    work = builder.gpu_equivalent() * mean_run * segment_factor
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
