"""Alibaba's openb pod list (cluster-trace-gpu-v2023; Weng et al., ATC'23) replayed in time.

Input: ``openb_pod_list_*.csv`` with columns ``name, cpu_milli, memory_mib, num_gpu, gpu_milli`` and, optionally,
``gpu_spec, qos, pod_phase, creation_time, deletion_time, scheduled_time`` (seconds): the public dataset's
``default`` list has them all, its ``multigpu``/``gpuspec``/... lists only the first five. A column the header lacks
takes its documented default below; a column the header has is checked on every row. What
:func:`read_openb_pods` makes of a row:

- arrival (``submit_s``) = ``creation_time``, as in the trace (the trace starts at 0); without the column, every
  pod arrives at 0 in file order (a snapshot list, as the FGD paper's packing protocol replays it);
- run time = ``deletion_time - scheduled_time``, or ``- creation_time`` when ``scheduled_time`` is empty (the
  ``Pending`` pods of the default list, never scheduled upstream, are replayed as if they ran from creation to
  deletion; counted as ``never_scheduled=N``). Rows whose lifetime is not positive are dropped and counted
  (``dropped_nonpositive=N``; 1 row of the default list). Without ``deletion_time`` a pod never leaves: it runs
  for the longest standard time limit (90 days, ``STANDARD_LIMITS_S``), longer than any window replayed, and the
  description says ``no_lifetimes``;
- ``num_gpu = 0`` -> a CPU-only job (``gpus=0``); ``num_gpu = 1`` with ``gpu_milli < 1000`` -> a fractional share
  of one GPU; ``num_gpu = k >= 1`` with ``gpu_milli = 1000`` -> ``k`` whole GPUs. ``cpu_milli`` and ``memory_mib``
  come from the row. Any other combination is a malformed row;
- ``gpu_spec`` ``A|B`` -> ``gpu_models=("A", "B")`` with the openb model names kept verbatim (``V100M16``...);
  empty or no column -> any model;
- ``qos`` -> priority and preemptibility: ``LS`` (latency-sensitive) and ``Guaranteed`` -> HIGH, not preemptible;
  ``Burstable`` -> NORMAL, preemptible; ``BE`` (best effort) -> LOW, preemptible (LOW rather than SCAVENGER so
  best-effort work still counts in fair share); no column -> ``Burstable``, the class Kubernetes gives a pod that
  requests resources without equal limits (the pod lists give requests only);
- ``pod_phase = Failed`` -> ``SimJob.fails`` (it still held its resources for its lifetime); no column -> none fails;
- tenants: one project per QoS class (``openb-ls``, ``openb-be``, ``openb-burstable``, ``openb-guaranteed``), equal
  weights, organization ``alibaba-openb``, program ``openb``; ``user`` is the project (the trace has no users);
  ``name`` is the resource shape (``cpu``, ``gpu-460m``, ``gpu-1x``, ``gpu-8x``) so history-based estimators
  group alike pods;
- job id = pod name; jobs sorted by ``(creation_time, line)``;
- time limits: :func:`kfabric.traces.philly.user_time_limits` (smallest standard limit >= run x U[1, 5]).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from kfabric.model.job import MILLI_PER_GPU, Job, PriorityClass
from kfabric.sched.fairshare import TenantInfo
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.philly import (
    SHARED_TRACES,
    STANDARD_LIMITS_S,
    count_over_max_limit,
    row_error,
    user_time_limits,
)

DEFAULT_PODS_CSV = SHARED_TRACES / "alibaba-openb-2023" / "csv" / "openb_pod_list_default.csv"
COLUMNS = (
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
#: qos -> (project suffix, priority, preemptible)
QOS: dict[str, tuple[str, PriorityClass, bool]] = {
    "LS": ("ls", PriorityClass.HIGH, False),
    "Guaranteed": ("guaranteed", PriorityClass.HIGH, False),
    "Burstable": ("burstable", PriorityClass.NORMAL, True),
    "BE": ("be", PriorityClass.LOW, True),
}
#: the columns every pod list has; the others of ``COLUMNS`` are optional (module docstring for their defaults)
REQUIRED = COLUMNS[:5]
DEFAULT_QOS = "Burstable"
ORGANIZATION = "alibaba-openb"
PROGRAM = "openb"


def _integer(path: Path, line: int, row: dict[str, str], key: str, low: int, high: int | None = None) -> int:
    text = (row.get(key) or "").strip()
    try:
        value = int(text)
    except ValueError:
        raise row_error(path, line, key, f"not a whole number: {text!r}", "write an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise row_error(path, line, key, f"must be {bound}, got {value}", "fix the value or drop the row")
    return value


def _seconds(path: Path, line: int, row: dict[str, str], key: str, required: bool) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        if required:
            raise row_error(path, line, key, "empty", "write seconds from the trace's start")
        return None
    try:
        value = float(text)
    except ValueError:
        raise row_error(path, line, key, f"not a number: {text!r}", "write seconds from the trace's start") from None
    if not math.isfinite(value) or value < 0:
        raise row_error(path, line, key, f"must be >= 0, got {value}", "write seconds from the trace's start")
    return value


def _shape(path: Path, line: int, num_gpu: int, gpu_milli: int) -> tuple[int, int]:
    """``(gpus, gpu_milli)`` of a job for a row's ``num_gpu`` and ``gpu_milli``."""
    if num_gpu == 0:
        if gpu_milli != 0:
            raise row_error(path, line, "gpu_milli", f"{gpu_milli} for a pod with num_gpu 0", "set gpu_milli to 0")
        return 0, MILLI_PER_GPU
    if gpu_milli == 0:
        raise row_error(path, line, "gpu_milli", f"0 for a pod with num_gpu {num_gpu}", "set 1..1000 milli per GPU")
    if gpu_milli < MILLI_PER_GPU:
        if num_gpu != 1:
            raise row_error(
                path, line, "gpu_milli", f"a fractional share ({gpu_milli}) needs num_gpu 1, got {num_gpu}", "fix it"
            )
        return 1, gpu_milli
    return num_gpu, MILLI_PER_GPU


def read_openb_pods(pods_csv: Path | str = DEFAULT_PODS_CSV, time_limit_seed: int = 0) -> Workload:
    """The pod list as a time-ordered workload (module docstring for every rule)."""
    path = Path(pods_csv)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise row_error(path, None, "file", f"cannot read it ({exc.strerror})", "pass an openb pod list CSV") from None
    rows: list[tuple[float, int, str, int, int, int, int, tuple[str, ...], str, float, bool]] = []
    seen: set[str] = set()
    dropped = 0
    never_scheduled = 0
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise row_error(
                path,
                1,
                "header",
                f"missing column(s) {', '.join(missing)}",
                "header " + ",".join(REQUIRED) + " (optionally followed by " + ",".join(COLUMNS[5:]) + ")",
            )
        has = set(header)
        timed = "deletion_time" in has
        for line, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not name:
                raise row_error(path, line, "name", "empty", "give every pod a unique name")
            if name in seen:
                raise row_error(path, line, "name", f"duplicate pod name {name!r}", "give every pod a unique name")
            seen.add(name)
            cpu = _integer(path, line, row, "cpu_milli", 0)
            mem = _integer(path, line, row, "memory_mib", 0)
            num_gpu = _integer(path, line, row, "num_gpu", 0)
            gpu_milli = _integer(path, line, row, "gpu_milli", 0, MILLI_PER_GPU)
            gpus, milli = _shape(path, line, num_gpu, gpu_milli)
            qos = (row.get("qos") or "").strip() if "qos" in has else DEFAULT_QOS
            if qos not in QOS:
                raise row_error(path, line, "qos", f"unknown QoS {qos!r}", "use one of " + ", ".join(QOS))
            spec = tuple(m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip())
            created = _seconds(path, line, row, "creation_time", required=True) if "creation_time" in has else 0.0
            scheduled = _seconds(path, line, row, "scheduled_time", required=False)
            assert created is not None
            if timed:
                deleted = _seconds(path, line, row, "deletion_time", required=True)
                assert deleted is not None
                lifetime = deleted - (scheduled if scheduled is not None else created)
            else:
                lifetime = STANDARD_LIMITS_S[-1]
            if lifetime <= 0:
                dropped += 1
                continue
            never_scheduled += timed and scheduled is None
            fails = (row.get("pod_phase") or "").strip() == "Failed"
            rows.append((created, line, name, cpu, mem, gpus, milli, spec, qos, lifetime, fails))
    if not rows:
        raise row_error(path, None, "rows", "no pod with a positive lifetime", "pass a non-empty openb pod list")
    rows.sort(key=lambda r: (r[0], r[1]))
    runs = np.array([r[9] for r in rows])
    limits = user_time_limits(runs, time_limit_seed).tolist()
    jobs: list[SimJob] = []
    for (created, _line, name, cpu, mem, gpus, milli, spec, qos, lifetime, fails), limit in zip(
        rows, limits, strict=True
    ):
        suffix, priority, preemptible = QOS[qos]
        project = f"openb-{suffix}"
        job = Job(
            id=name,
            project=project,
            time_limit_s=limit,
            gpus=gpus,
            gpu_milli=milli,
            gpu_models=spec,
            user=project,
            name=f"{suffix}-{shape_name(gpus, milli)}",
            submit_s=created,
            priority=priority,
            preemptible=preemptible,
            cpu_milli=cpu,
            memory_mib=mem,
        )
        jobs.append(SimJob(job, lifetime, fails))
    tenants = {
        f"openb-{suffix}": TenantInfo(project=f"openb-{suffix}", organization=ORGANIZATION, program=PROGRAM)
        for suffix, _, _ in QOS.values()
    }
    description = (
        f"Alibaba openb pods from {path}: {len(jobs)} jobs; dropped_nonpositive={dropped}; "
        f"never_scheduled={never_scheduled} (run = deletion - creation); "
        f"failed={sum(j.fails for j in jobs)}; limit_over_90d={count_over_max_limit(runs)}; "
        + ("" if timed else "no_lifetimes (no deletion_time: pods never leave); ")
        + f"time limits seed {time_limit_seed}"
    )
    return Workload(name="openb", jobs=jobs, tenants=tenants, description=description)


def shape_name(gpus: int, gpu_milli: int) -> str:
    """``gpu-460m`` for a fractional share, ``gpu-2x`` for whole GPUs, ``cpu`` for none."""
    if gpus == 0:
        return "cpu"
    return f"gpu-{gpu_milli}m" if gpu_milli < MILLI_PER_GPU else f"gpu-{gpus}x"
