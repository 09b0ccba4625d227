"""Run metrics, exactly as product.md section 7 defines them, computed at the end from arrays.

* utilization = allocated GPU-seconds / online GPU-seconds over the window;
* JCT = end - submit; wait = first start - submit; bounded slowdown = max(1, JCT / max(run time, 10 s));
* fairness: each tenant's share of service units vs its entitlement, and Jain's index over tenants;
* fragmentation: free GPUs that cannot host the queue's typical job (sampled over time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
)


@dataclass(slots=True)
class JobRecord:
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

    @property
    def wait_s(self) -> float:
        return self.start_s - self.submit_s

    @property
    def jct_s(self) -> float:
        return self.end_s - self.submit_s

    @property
    def slowdown(self) -> float:
        return max(1.0, self.jct_s / max(self.run_s, 10.0))

    def row(self) -> list[object]:
        return [
            self.job_id,
            self.project,
            round(self.gpus, 3),
            size_class(self.gpus),
            round(self.submit_s, 1),
            round(self.start_s, 1),
            round(self.end_s, 1),
            round(self.wait_s, 1),
            round(self.jct_s, 1),
            round(self.run_s, 1),
            round(self.slowdown, 4),
            self.preemptions,
            round(self.lost_gpu_s, 1),
            round(self.gpu_s, 1),
            round(self.su, 2),
            self.state,
            self.pool,
        ]


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


def _pct(x: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(x, q)) if x.size else 0.0


def summarize(
    jobs: Sequence[JobRecord],
    allocated_gpu_s: float,
    online_gpu_s: float,
    entitlement: Mapping[str, float],
    su_by_project: Mapping[str, float],
    extra: Mapping[str, object],
) -> dict[str, object]:
    """The run summary (JSON-ready). Jobs that never finished are not in ``jobs``; ``extra`` adds counts."""
    done = [j for j in jobs if j.state in ("succeeded", "failed", "timeout")]
    jct = np.asarray([j.jct_s for j in done], dtype=np.float64)
    wait = np.asarray([j.wait_s for j in done], dtype=np.float64)
    slow = np.asarray([j.slowdown for j in done], dtype=np.float64)
    active = {p: e for p, e in entitlement.items() if p in su_by_project}
    ent_total = sum(active.values()) or 1.0
    su_total = sum(su_by_project.values()) or 1.0
    tenants = {
        p: {
            "share": su_by_project.get(p, 0.0) / su_total,
            "entitlement": e / ent_total,
        }
        for p, e in sorted(active.items())
    }
    ratios = [t["share"] / t["entitlement"] for t in tenants.values() if t["entitlement"] > 0]
    return {
        "jobs_finished": len(done),
        "utilization": allocated_gpu_s / online_gpu_s if online_gpu_s > 0 else 0.0,
        "avg_jct_s": float(jct.mean()) if jct.size else 0.0,
        "p50_jct_s": _pct(jct, 50),
        "p99_jct_s": _pct(jct, 99),
        "avg_wait_s": float(wait.mean()) if wait.size else 0.0,
        "p999_wait_s": _pct(wait, 99.9),
        "avg_bounded_slowdown": float(slow.mean()) if slow.size else 0.0,
        "preemptions": int(sum(j.preemptions for j in jobs)),
        "lost_gpu_hours": sum(j.lost_gpu_s for j in jobs) / 3600.0,
        "jain_index": jain(ratios),
        "tenants": tenants,
        **extra,
    }
