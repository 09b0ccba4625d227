"""Run metrics, computed at the end from arrays. Every definition is in ``docs/metrics.md``; in short:

* utilization = allocated GPU-seconds / online GPU-seconds over the window;
* waits and bounded slowdowns are over *every submitted job* (admitted to the queue): a job not started by the
  window's end counts with wait = window end - submit and is marked ``censored``; its slowdown uses the same
  lower bound of its completion time. JCT is over finished jobs only;
* beside them: jobs never started (with the reason the last cycle gave), the maximum wait, jobs rejected at
  admission with their reasons, waits by size class, GPU-hours delivered by owner, program and size class, and
  the capacity lent (run on borrowed capacity of another owner's lendable pool);
* fairness: ``jain_demand`` is Jain's index over delivered / max-min fair GPU-hours, where the fair share is the
  window's online GPU-hours water-filled by entitlement with each tenant's demand as its cap;
  ``jain_entitlement`` (also under its old key ``jain_index``) is Jain's index over SU share / entitlement;
* reservations: for each project holding reserved GPUs, the reservation, demand, delivery and the longest wait
  of a job that fits inside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

JOB_FIELDS = (
    "job_id",
    "project",
    "gpus",
    "size_class",
    "submit_s",
    "start_s",
    "end_s",
    "wait_s",
    "jct_s",
    "run_s",
    "slowdown",
    "preemptions",
    "lost_gpu_s",
    "gpu_s",
    "su",
    "state",
    "pool",
    "censored",
    "reason",
    "gpu_model",
)
#: the states of a job that ended inside the window
FINISHED = frozenset({"succeeded", "failed", "timeout"})
#: job-size classes in GPUs, smallest first (``size_class``)
SIZE_CLASSES = ("fraction", "1", "2-8", "9-64", "65-512", "513+")
#: the size class whose jobs the report lists one by one ("hero" jobs)
HERO_CLASS = "513+"
HERO_LIST_MAX = 20
HOUR_S = 3600.0


@dataclass(slots=True)
class JobRecord:
    """One submitted job at the end of the run. ``start_s``/``end_s`` are NaN when it never started/finished;
    ``window_end_s`` is the window's end for a job still in the system (its wait and slowdown are censored there).
    ``reason`` is why the last cycle left a never-started job waiting (a ``ReasonCode`` value)."""

    job_id: str
    project: str
    gpus: float
    submit_s: float
    start_s: float
    end_s: float
    run_s: float
    preemptions: int
    lost_gpu_s: float
    gpu_s: float
    su: float
    state: str
    pool: str
    window_end_s: float = math.nan
    reason: str = ""
    #: the GPU model of the pool it last ran on ("" if it never ran): where each job class ran (docs/gpu-speeds.md)
    gpu_model: str = ""

    @property
    def started(self) -> bool:
        return not math.isnan(self.start_s)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def censored(self) -> bool:
        """Never started by the window's end: the wait shown is a lower bound."""
        return not self.started

    @property
    def wait_s(self) -> float:
        return (self.start_s if self.started else self.window_end_s) - self.submit_s

    @property
    def jct_s(self) -> float:
        return self.end_s - self.submit_s

    @property
    def slowdown(self) -> float:
        """Bounded slowdown; for a job still in the system, of its completion time so far (a lower bound)."""
        jct = self.jct_s if self.finished else self.window_end_s - self.submit_s
        return max(1.0, jct / max(self.run_s, 10.0))

    def row(self) -> list[object]:
        return [
            self.job_id,
            self.project,
            round(self.gpus, 3),
            size_class(self.gpus),
            _cell(self.submit_s),
            _cell(self.start_s),
            _cell(self.end_s),
            _cell(self.wait_s),
            _cell(self.jct_s),
            _cell(self.run_s),
            _cell(self.slowdown, 4),
            self.preemptions,
            _cell(self.lost_gpu_s),
            _cell(self.gpu_s),
            _cell(self.su, 2),
            self.state,
            self.pool,
            int(self.censored),
            self.reason,
            self.gpu_model,
        ]


def _cell(value: float, digits: int = 1) -> object:
    """A CSV cell: an empty cell for a value that does not exist (NaN)."""
    return "" if math.isnan(value) else round(value, digits)


def size_class(gpus: float) -> str:
    if gpus < 1:
        return "fraction"
    if gpus <= 1:
        return "1"
    if gpus <= 8:
        return "2-8"
    if gpus <= 64:
        return "9-64"
    if gpus <= 512:
        return "65-512"
    return "513+"


def jain(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or not np.any(x):
        return 1.0
    return float(x.sum() ** 2 / (x.size * np.square(x).sum()))


def water_fill(capacity: float, weights: Mapping[str, float], caps: Mapping[str, float]) -> dict[str, float]:
    """Max-min fair split of ``capacity`` by ``weights``, each tenant capped at ``caps`` (its demand): tenants
    asking less than their weighted level get what they ask, the rest is shared by weight among the others."""
    out = {t: 0.0 for t in caps}
    active = sorted((t for t in caps if caps[t] > 0 and weights.get(t, 0.0) > 0), key=lambda t: caps[t] / weights[t])
    left = max(capacity, 0.0)
    weight_left = sum(weights[t] for t in active)
    for i, t in enumerate(active):
        level = left / weight_left if weight_left > 0 else 0.0
        if caps[t] <= level * weights[t]:
            out[t] = caps[t]
            left -= caps[t]
            weight_left -= weights[t]
            continue
        for rest in active[i:]:
            out[rest] = level * weights[rest]
        break
    return out


def _pct(x: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(x, q)) if x.size else 0.0


def _max(x: npt.NDArray[np.float64]) -> float:
    return float(x.max()) if x.size else 0.0


@dataclass(frozen=True)
class Reserved:
    """A grant holding reserved GPUs, on the simulation clock."""

    grant: str
    project: str
    model: str
    gpus: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class RunFacts:
    """What a run leaves for its summary: every submitted job (finished or not) and the run's accounts."""

    jobs: Sequence[JobRecord]
    window_s: float
    allocated_gpu_s: float
    online_gpu_s: float
    #: fair-share entitlement per project (sums to 1 over the tree)
    entitlement: Mapping[str, float]
    su_by_project: Mapping[str, float]
    program_of: Mapping[str, str] = field(default_factory=dict)
    owner_of_pool: Mapping[str, str] = field(default_factory=dict)
    lendable_pools: frozenset[str] = frozenset()
    #: GPU-seconds held per pool (finished and running attempts), and on borrowed capacity
    gpu_s_by_pool: Mapping[str, float] = field(default_factory=dict)
    borrowed_gpu_s_by_pool: Mapping[str, float] = field(default_factory=dict)
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    reserved: Sequence[Reserved] = ()
    #: job id -> the reserved grant it fits inside (GPUs <= reserved GPUs, of an acceptable model, in force)
    fits_reservation: Mapping[str, str] = field(default_factory=dict)


def demand_gpu_s(job: JobRecord, window_s: float) -> float:
    """The GPU-seconds a job asks for inside the window: its GPUs x its run time, cut at the window's end."""
    return job.gpus * max(0.0, min(job.run_s, window_s - job.submit_s))


def _hours(values: Mapping[str, float]) -> dict[str, float]:
    return {k: v / HOUR_S for k, v in sorted(values.items()) if v > 0}


def _waits(jobs: Sequence[JobRecord]) -> dict[str, float | int]:
    wait = np.asarray([j.wait_s for j in jobs], dtype=np.float64)
    return {
        "jobs": len(jobs),
        "never_started": sum(1 for j in jobs if j.censored),
        "avg_wait_s": float(wait.mean()) if wait.size else 0.0,
        "p99_wait_s": _pct(wait, 99),
        "max_wait_s": _max(wait),
    }


def summarize(facts: RunFacts, extra: Mapping[str, object]) -> dict[str, object]:
    """The run summary (JSON-ready); ``extra`` adds what the engine counts (cycles, wall time, ...)."""
    jobs = facts.jobs
    done = [j for j in jobs if j.finished]
    jct = np.asarray([j.jct_s for j in done], dtype=np.float64)
    wait = np.asarray([j.wait_s for j in jobs], dtype=np.float64)
    slow = np.asarray([j.slowdown for j in jobs], dtype=np.float64)
    never = [j for j in jobs if j.censored]
    never_by_reason: dict[str, int] = defaultdict(int)
    for j in never:
        never_by_reason[j.reason or "not yet considered"] += 1
    by_size: dict[str, list[JobRecord]] = defaultdict(list)
    gpu_s_by_size: dict[str, float] = defaultdict(float)
    gpu_s_by_program: dict[str, float] = defaultdict(float)
    gpu_s_by_project: dict[str, float] = defaultdict(float)
    demand_by_project: dict[str, float] = defaultdict(float)
    for j in jobs:
        cls = size_class(j.gpus)
        by_size[cls].append(j)
        gpu_s_by_size[cls] += j.gpu_s
        gpu_s_by_program[facts.program_of.get(j.project, "-")] += j.gpu_s
        gpu_s_by_project[j.project] += j.gpu_s
        demand_by_project[j.project] += demand_gpu_s(j, facts.window_s)
    gpu_s_by_owner: dict[str, float] = defaultdict(float)
    for pool, gpu_s in facts.gpu_s_by_pool.items():
        gpu_s_by_owner[facts.owner_of_pool.get(pool, "-")] += gpu_s
    lent: dict[str, float] = defaultdict(float)
    borrowed_total = 0.0
    for pool, gpu_s in facts.borrowed_gpu_s_by_pool.items():
        borrowed_total += gpu_s
        if pool in facts.lendable_pools:
            lent[facts.owner_of_pool.get(pool, "-")] += gpu_s
    tenants, jain_demand, jain_entitlement = _fairness(facts, gpu_s_by_project, demand_by_project)
    rejected = dict(sorted(facts.rejected_by_reason.items()))
    heroes = sorted(by_size.get(HERO_CLASS, []), key=lambda j: (-j.gpus, j.submit_s, j.job_id))
    return {
        "jobs_submitted": len(jobs),
        "jobs_finished": len(done),
        "jobs_unfinished": len(jobs) - len(done),
        "jobs_never_started": len(never),
        "never_started_by_reason": dict(sorted(never_by_reason.items())),
        "jobs_rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "utilization": facts.allocated_gpu_s / facts.online_gpu_s if facts.online_gpu_s > 0 else 0.0,
        "avg_jct_s": float(jct.mean()) if jct.size else 0.0,
        "p50_jct_s": _pct(jct, 50),
        "p99_jct_s": _pct(jct, 99),
        "avg_wait_s": float(wait.mean()) if wait.size else 0.0,
        "p50_wait_s": _pct(wait, 50),
        "p99_wait_s": _pct(wait, 99),
        "p999_wait_s": _pct(wait, 99.9),
        "max_wait_s": _max(wait),
        "avg_bounded_slowdown": float(slow.mean()) if slow.size else 0.0,
        "wait_by_size": {c: _waits(by_size[c]) for c in SIZE_CLASSES if by_size.get(c)},
        "hero_jobs": [
            {
                "job_id": j.job_id,
                "project": j.project,
                "gpus": j.gpus,
                "wait_s": j.wait_s,
                "censored": j.censored,
                "state": j.state,
                "reason": j.reason,
            }
            for j in heroes[:HERO_LIST_MAX]
        ],
        "preemptions": int(sum(j.preemptions for j in jobs)),
        "lost_gpu_hours": sum(j.lost_gpu_s for j in jobs) / HOUR_S,
        "gpu_hours_delivered": sum(facts.gpu_s_by_pool.values()) / HOUR_S,
        "gpu_hours_by_owner": _hours(gpu_s_by_owner),
        "gpu_hours_by_program": _hours(gpu_s_by_program),
        "gpu_hours_by_size": {c: gpu_s_by_size[c] / HOUR_S for c in SIZE_CLASSES if c in gpu_s_by_size},
        "borrowed_gpu_hours": borrowed_total / HOUR_S,
        "lent_gpu_hours": sum(lent.values()) / HOUR_S,
        "lent_gpu_hours_by_owner": _hours(lent),
        "jain_demand": jain_demand,
        "jain_entitlement": jain_entitlement,
        "jain_index": jain_entitlement,  # the old key (share / entitlement), kept for scripts that read it
        "tenants": tenants,
        "reservations": _reservations(facts, gpu_s_by_project, demand_by_project),
        **extra,
    }


def _fairness(
    facts: RunFacts, delivered: Mapping[str, float], demand: Mapping[str, float]
) -> tuple[dict[str, dict[str, float]], float, float]:
    """Per-tenant shares and the two Jain indexes (module docstring)."""
    active = {p: e for p, e in facts.entitlement.items() if p in facts.su_by_project}
    ent_total = sum(active.values()) or 1.0
    su_total = sum(facts.su_by_project.values()) or 1.0
    asking = {p: d for p, d in demand.items() if d > 0}
    weights = {p: facts.entitlement.get(p, 0.0) for p in asking}
    floor = min((w for w in weights.values() if w > 0), default=1.0)
    weights = {p: w if w > 0 else floor for p, w in weights.items()}  # a tenant outside the tree: the least weight
    fair = water_fill(facts.online_gpu_s, weights, asking)
    tenants: dict[str, dict[str, float]] = {}
    for p in sorted(set(active) | set(asking)):
        row: dict[str, float] = {}
        if p in active:
            row["share"] = facts.su_by_project.get(p, 0.0) / su_total
            row["entitlement"] = active[p] / ent_total
        if p in asking:
            row["demand_gpu_hours"] = asking[p] / HOUR_S
            row["delivered_gpu_hours"] = delivered.get(p, 0.0) / HOUR_S
            row["fair_gpu_hours"] = fair[p] / HOUR_S
        tenants[p] = row
    ent_ratios = [facts.su_by_project.get(p, 0.0) / su_total / (e / ent_total) for p, e in active.items() if e > 0]
    demand_ratios = [delivered.get(p, 0.0) / fair[p] for p in asking if fair[p] > 0]
    return tenants, jain(demand_ratios), jain(ent_ratios)


def _reservations(
    facts: RunFacts, delivered: Mapping[str, float], demand: Mapping[str, float]
) -> dict[str, dict[str, object]]:
    """Per project holding reserved GPUs in the window: what it holds, asks for, gets, and how long a job that
    fits inside its reservation waited (censored at the window's end when it never started)."""
    by_project: dict[str, list[Reserved]] = defaultdict(list)
    for r in facts.reserved:
        if r.gpus > 0 and r.start_s < facts.window_s and r.end_s > 0:
            by_project[r.project].append(r)
    fitting: dict[str, list[JobRecord]] = defaultdict(list)
    for j in facts.jobs:
        if j.job_id in facts.fits_reservation:
            fitting[j.project].append(j)
    out: dict[str, dict[str, object]] = {}
    for project, grants in sorted(by_project.items()):
        waits = _waits(fitting.get(project, []))
        out[project] = {
            "grants": sorted(g.grant for g in grants),
            "reserved_gpus": {
                m: max(g.gpus for g in grants if g.model == m) for m in sorted({g.model for g in grants})
            },
            "demand_gpu_hours": demand.get(project, 0.0) / HOUR_S,
            "delivered_gpu_hours": delivered.get(project, 0.0) / HOUR_S,
            "jobs_fitting": waits["jobs"],
            "never_started_fitting": waits["never_started"],
            "max_wait_fitting_s": waits["max_wait_s"],
        }
    return out
