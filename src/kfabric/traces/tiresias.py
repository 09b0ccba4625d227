"""The Tiresias simulator's job list (Gu et al., NSDI'19; ``60_job.csv``: a Philly-like 60-job trace).

Columns ``job_id, num_gpu, submit_time, iterations, model_name, duration, interval`` (seconds). What
:func:`read_tiresias` makes of a row: arrival = ``submit_time``, run time = ``duration``, ``gpus = num_gpu``,
``name = model_name``; job id ``tiresias-<job_id>``; one project ``tiresias`` (organization and program of the
same name, user = project); any GPU model; priority NORMAL; preemptible with a checkpoint every 30 min (as the
Philly-derived jobs: Tiresias preempts and resumes jobs). ``iterations`` and ``interval`` are checked but unused.
Time limits: :func:`kfabric.traces.philly.user_time_limits` (smallest standard limit >= run x U[1, 5]).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from kfabric.model.job import Job, PriorityClass
from kfabric.sched.fairshare import TenantInfo
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.philly import CHECKPOINT_S, SHARED_TRACES, row_error, user_time_limits

DEFAULT_CSV = SHARED_TRACES / "philly-derived" / "tiresias" / "60_job.csv"
COLUMNS = ("job_id", "num_gpu", "submit_time", "iterations", "model_name", "duration", "interval")
PROJECT = "tiresias"


def _number(path: Path, line: int, row: dict[str, str], key: str, positive: bool) -> float:
    text = (row.get(key) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise row_error(path, line, key, f"not a number: {text!r}", "write a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise row_error(path, line, key, f"must be {'> 0' if positive else '>= 0'}, got {value}", "fix the value")
    return value


def read_tiresias(csv_path: Path | str = DEFAULT_CSV, time_limit_seed: int = 0) -> Workload:
    """The job list as a workload sorted by arrival (module docstring for every rule)."""
    path = Path(csv_path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise row_error(path, None, "file", f"cannot read it ({exc.strerror})", "pass Tiresias' job CSV") from None
    rows: list[tuple[float, int, str, int, str, float]] = []
    seen: set[str] = set()
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise row_error(path, 1, "header", f"missing column(s) {', '.join(missing)}", "header " + ",".join(COLUMNS))
        for line, row in enumerate(reader, start=2):
            job_id = (row.get("job_id") or "").strip()
            if not job_id or job_id in seen:
                raise row_error(path, line, "job_id", f"empty or duplicate: {job_id!r}", "give each job a unique id")
            seen.add(job_id)
            gpus = _number(path, line, row, "num_gpu", positive=True)
            if gpus != int(gpus):
                raise row_error(path, line, "num_gpu", f"not a whole number: {gpus}", "write the GPUs as an integer")
            submit = _number(path, line, row, "submit_time", positive=False)
            duration = _number(path, line, row, "duration", positive=True)
            _number(path, line, row, "iterations", positive=False)
            _number(path, line, row, "interval", positive=False)
            model = (row.get("model_name") or "").strip()
            if not model:
                raise row_error(path, line, "model_name", "empty", "name the model, e.g. vgg19")
            rows.append((submit, line, job_id, int(gpus), model, duration))
    if not rows:
        raise row_error(path, None, "rows", "no jobs", "pass a non-empty Tiresias job CSV")
    rows.sort(key=lambda r: (r[0], r[1]))
    limits = user_time_limits(np.array([r[5] for r in rows]), time_limit_seed).tolist()
    jobs = [
        SimJob(
            Job(
                id=f"tiresias-{job_id}",
                project=PROJECT,
                time_limit_s=limit,
                gpus=gpus,
                user=PROJECT,
                name=model,
                submit_s=submit,
                priority=PriorityClass.NORMAL,
                preemptible=True,
                checkpoint_interval_s=CHECKPOINT_S,
            ),
            duration,
        )
        for (submit, _line, job_id, gpus, model, duration), limit in zip(rows, limits, strict=True)
    ]
    tenants = {PROJECT: TenantInfo(project=PROJECT, organization=PROJECT, program=PROJECT)}
    description = f"Tiresias job list from {path}: {len(jobs)} jobs; time limits seed {time_limit_seed}"
    return Workload(name="tiresias", jobs=jobs, tenants=tenants, description=description)
