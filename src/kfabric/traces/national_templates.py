"""Job templates of the synthetic national workload (:mod:`kfabric.traces.national`): job classes, sizes, run
times, constraints and classification.

Job names repeat per project (each project has a few named job *templates* with a fixed size and a typical run
time; a rerun varies by a factor ``exp(N(0, 0.35))``), so history-based estimators have something to learn.

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
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from kfabric.model import Classification, MinTopology, NodePool, PriorityClass
from kfabric.model.job import MILLI_PER_GPU
from kfabric.scenarios.loader import Scenario
from kfabric.traces.national_projects import NationalProject
from kfabric.traces.philly import DAY_S, HOUR_S

WITHIN_SIGMA = 0.35
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
#: templates per project and class
TEMPLATES = {"fm": 6, "grant": 5, "small": 5, "fractional": 3, "owner": 10}


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
    """What a set of pools allows a template: the pools, their largest NVLink domain and pool, clearance."""

    pools: list[NodePool]
    domain: int
    cap: int
    clearance: Classification


class TemplateBuilder:
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
            self._allowed[key] = _Allowed(
                chosen,
                max((p.nvlink_domain_gpus for p in chosen), default=1),
                # a job is placed inside one pool (sched/placement.py): a size over the largest pool never starts
                max((p.gpus for p in chosen), default=0),
                max((self.fleet.site_of(p).clearance for p in chosen), default=Classification.PUBLIC),
            )
        return self._allowed[key]

    def add(self, index: int, project: NationalProject, cls: str, count: int, activity: float) -> list[int]:
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
