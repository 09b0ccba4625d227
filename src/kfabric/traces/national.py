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
owners, or sharing ``shared``) and each private owner's own pools are loaded separately to ``load`` (default
0.85): fm streams take 90% of their reservations (at most half of the public target), the rest of the public
target goes 65% to ``grant`` and 35% to ``small``; each owner stream gets ``load`` x its pools' GPUs. A stream's
rate is ``scale x target GPUs / E[GPU-seconds per job]``, the expectation computed exactly over its templates
(clipped lognormal). Job sizes are capped at the largest cluster of their allowed pools. Expected and realized
offered load are in ``Workload.description``. Generation is vectorized (:func:`national_arrays`); Job objects
are built afterwards. Time limits: :func:`kfabric.traces.philly.user_time_limits`.
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from kfabric.model.job import Job
from kfabric.scenarios.loader import Scenario
from kfabric.sched.fairshare import TenantInfo
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.national_projects import build_projects, public_pools
from kfabric.traces.national_templates import CLASSES, TEMPLATES, WITHIN_SIGMA, JobClass, TemplateBuilder
from kfabric.traces.philly import DAY_S, HOUR_S, user_time_limits

__all__ = [
    "CLASSES",
    "DEFAULT_LOAD",
    "FM_UTILIZATION",
    "MODULATION",
    "PEAK_HOUR_KST",
    "TEMPLATES",
    "WITHIN_SIGMA",
    "JobClass",
    "NationalArrays",
    "national_arrays",
    "synthetic_national",
]

DEFAULT_LOAD = 0.85
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
    projects = build_projects(scenario, pools, rng, on)
    builder = TemplateBuilder(scenario, rng)
    streams: list[tuple[str, list[int], float]] = []  # (kind, template ids, target GPUs)
    public_gpus = sum(p.gpus for p in public_pools(scenario, pools))
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
    return Workload(name=f"national-{scenario.name}", jobs=jobs, tenants=a.tenants, description=a.description)


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
