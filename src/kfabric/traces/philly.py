"""Gavel's Philly-derived job traces (Narayanan et al., OSDI'20; repo ``stanford-futuredata/gavel``).

Input: one ``*.trace`` file per Philly virtual cluster (VC), tab-separated, no header, 7 fields
``job_type, command, num_steps_arg, needs_data_dir, total_steps, arrival_time_s, scale_factor``, and the
throughput table ``isolated_throughputs_steps_per_s.json``: ``{gpu_type: {"<job_type>|<scale_factor>": steps/s}}``
with ``gpu_type`` in ``k80, p100, v100`` and ``<type>_unconsolidated`` for a job spread over several servers.

What :func:`read_gavel` makes of it:

- every VC (file stem) is a project of equal weight: ``TenantInfo(project=VC, organization=VC, program="philly")``;
  jobs carry ``user=VC``, ``name=job_type``, ``gpus=scale_factor``, ``gpu_models=(gpu_type.upper(),)``, no node
  shape, priority NORMAL, preemptible, a checkpoint every 30 min;
- arrivals are the trace's (seconds from each VC's start; all VCs start together), merged and sorted by
  ``(arrival, VC, line)``; job ids are ``philly-<VC>-<line>``, stable across runs;
- run time = ``total_steps / throughput``. A job that fits one server (``scale_factor <= gpus_per_server``, 8 as
  in Philly's 8-GPU servers) reads the consolidated table (``v100``); a larger one spans servers and reads
  ``v100_unconsolidated`` (when the JSON has it).

**Missing throughputs.** The table was measured for 1, 2, 4 and 8 GPUs and only for the job types that Gavel
runs distributed; the Philly-derived traces also ask for 7, 12, 16, 20, 24, 32 and 64 GPUs, and for multi-GPU
A3C, CycleGAN and Recommendation jobs. For such a ``(job_type, scale_factor)`` pair we take the measured entry
of the same job type and table whose scale factor is nearest in ratio (ties: the smaller one) and assume
throughput scales *linearly* with GPUs: ``thr(s) = thr(s') * s / s'``. Linear scaling is optimistic (run times
of these jobs are lower bounds). On the shipped ``msr/seed=0`` traces this concerns 1,548 of 15,264 jobs for
``v100``; the count is returned in ``Workload.description`` as ``derived_throughput=N``.

**Time limits** are what users ask for, not the truth: the smallest of 1, 2, 4, 8, 12, 24, 48, 72 h, 7, 14,
30, 90 days that is ``>= run * U``, ``U ~ uniform[1, 5]`` drawn from ``numpy.random.default_rng(seed)`` in the
workload's job order (arrival order). When ``run * U`` exceeds 90 days the limit is 90 days; when the run time
itself exceeds 90 days the limit is the run time rounded up to a whole day (so every job can finish). Counted
as ``limit_over_90d=N`` in the description (9 jobs of ``msr/seed=0`` on ``v100``, the longest ~131 days).
:func:`user_time_limits` is shared by the other trace readers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kfabric.model.job import Job, PriorityClass
from kfabric.sched.fairshare import TenantInfo
from kfabric.sim.workload import SimJob, Workload

SHARED_TRACES = Path(__file__).resolve().parents[3].parent / "shared" / "traces"
DEFAULT_GAVEL_DIR = SHARED_TRACES / "philly-derived" / "gavel" / "msr" / "seed=0"
DEFAULT_THROUGHPUTS = SHARED_TRACES / "philly-derived" / "gavel" / "isolated_throughputs_steps_per_s.json"
THROUGHPUTS_NAME = "isolated_throughputs_steps_per_s.json"

HOUR_S = 3600.0
DAY_S = 86400.0
#: the limits users pick from (Slurm-style round numbers), seconds
STANDARD_LIMITS_S: tuple[float, ...] = tuple(
    [h * HOUR_S for h in (1, 2, 4, 8, 12, 24, 48, 72)] + [d * DAY_S for d in (7, 14, 30, 90)]
)
CHECKPOINT_S = 1800.0
_FIELDS = ("job_type", "command", "num_steps_arg", "needs_data_dir", "total_steps", "arrival_time_s", "scale_factor")


def row_error(path: Path | str, line: int | None, field: str, problem: str, fix: str) -> ValueError:
    """The one error shape of every trace reader: file, line, field, what is wrong and how to fix it."""
    where = f"{path}:{line}" if line is not None else str(path)
    return ValueError(f"{where}: field {field!r}: {problem} (fix: {fix})")


def user_time_limits(run_s: npt.ArrayLike, seed: int) -> npt.NDArray[np.float64]:
    """Time limits users would ask for: the smallest standard limit ``>= run * U``, ``U ~ U[1, 5]``.

    ``U`` is drawn from ``default_rng(seed)`` in the order of ``run_s``. Above 90 days the limit is 90 days,
    or the run time rounded up to a whole day when the run itself is longer.
    """
    run = np.asarray(run_s, dtype=np.float64)
    u = np.random.default_rng(seed).uniform(1.0, 5.0, size=run.shape)
    limits = np.asarray(STANDARD_LIMITS_S)
    idx = np.searchsorted(limits, run * u, side="left")
    out = limits[np.minimum(idx, len(limits) - 1)]
    too_long = run > limits[-1]
    out[too_long] = np.ceil(run[too_long] / DAY_S) * DAY_S
    return out


def count_over_max_limit(run_s: npt.ArrayLike) -> int:
    return int(np.count_nonzero(np.asarray(run_s, dtype=np.float64) > STANDARD_LIMITS_S[-1]))


def load_throughputs(path: Path | str) -> dict[str, dict[str, float]]:
    """``{gpu_type: {"job_type|scale_factor": steps/s}}``, checked; ``null`` and 0 entries count as not measured."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise row_error(
            path, None, "file", f"cannot read it ({exc.strerror})", "pass Gavel's throughput JSON"
        ) from None
    except json.JSONDecodeError as exc:
        raise row_error(path, exc.lineno, "json", exc.msg, "pass a valid JSON file") from None
    if not isinstance(raw, dict) or not raw:
        raise row_error(path, 1, "top level", "expected an object {gpu_type: {...}}", "pass Gavel's throughput JSON")
    table: dict[str, dict[str, float]] = {}
    for gpu_type, entries in raw.items():
        if not isinstance(entries, dict):
            raise row_error(path, None, gpu_type, "expected an object of 'job_type|scale_factor': steps/s", "fix it")
        inner: dict[str, float] = {}
        for key, value in entries.items():
            ok_key = "|" in key and key.rpartition("|")[2].isdigit()
            if value is None or value == 0:
                continue  # not measured (Gavel writes null or 0): treated as missing, see the module docstring
            if not ok_key or isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise row_error(
                    path,
                    None,
                    f"{gpu_type}.{key}",
                    f"expected 'job_type|scale_factor': steps/s >= 0, got {value!r}",
                    "remove the entry or give the measured throughput",
                )
            inner[key] = float(value)
        table[gpu_type] = inner
    return table


class ThroughputLookup:
    """Throughput of ``(job_type, scale_factor)`` on one GPU type, deriving missing pairs (module docstring)."""

    def __init__(
        self, table: Mapping[str, Mapping[str, float]], gpu_type: str, gpus_per_server: int, source: str
    ) -> None:
        if gpu_type not in table:
            raise row_error(
                source, None, "gpu_type", f"no table {gpu_type!r}", f"use one of {', '.join(sorted(table))}"
            )
        self.consolidated = _by_type(table[gpu_type])
        spread = table.get(f"{gpu_type}_unconsolidated")
        self.unconsolidated = _by_type(spread) if spread is not None else self.consolidated
        self.gpus_per_server = gpus_per_server
        self.source = source
        self.derived = 0

    def steps_per_s(self, job_type: str, scale: int, where: tuple[str, int]) -> float:
        chosen = self.consolidated if scale <= self.gpus_per_server else self.unconsolidated
        measured = chosen.get(job_type) or self.consolidated.get(job_type)
        if not measured:
            raise row_error(
                where[0],
                where[1],
                "job_type",
                f"{job_type!r} has no throughput in {self.source}",
                "add the job type to the throughput JSON or drop the row",
            )
        if scale in measured:
            return measured[scale]
        self.derived += 1
        nearest = min(measured, key=lambda s: (abs(math.log(scale / s)), s))
        return measured[nearest] * scale / nearest


def _by_type(entries: Mapping[str, float]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for key, value in entries.items():
        job_type, _, scale = key.rpartition("|")
        out.setdefault(job_type, {})[int(scale)] = value
    return out


def _parse_row(path: Path, line: int, text: str) -> tuple[str, int, float, int]:
    parts = text.rstrip("\r\n").split("\t")
    if len(parts) != len(_FIELDS):
        raise row_error(
            path, line, "row", f"expected {len(_FIELDS)} tab-separated fields, got {len(parts)}", "; ".join(_FIELDS)
        )
    job_type = parts[0].strip()
    if not job_type:
        raise row_error(path, line, "job_type", "empty", "give the Gavel job type, e.g. 'ResNet-50 (batch size 64)'")
    try:
        steps = int(parts[4])
    except ValueError:
        raise row_error(
            path, line, "total_steps", f"not a whole number: {parts[4]!r}", "write the step count"
        ) from None
    try:
        arrival = float(parts[5])
    except ValueError:
        raise row_error(path, line, "arrival_time_s", f"not a number: {parts[5]!r}", "write seconds") from None
    try:
        scale = int(parts[6])
    except ValueError:
        raise row_error(path, line, "scale_factor", f"not a whole number: {parts[6]!r}", "write the GPUs") from None
    if steps <= 0:
        raise row_error(path, line, "total_steps", f"must be > 0, got {steps}", "drop the row or fix the count")
    if not math.isfinite(arrival) or arrival < 0:
        raise row_error(path, line, "arrival_time_s", f"must be >= 0, got {arrival}", "seconds from the VC's start")
    if scale < 1:
        raise row_error(path, line, "scale_factor", f"must be >= 1 GPU, got {scale}", "write the number of GPUs")
    return job_type, steps, arrival, scale


def read_gavel(
    trace_dir: Path | str = DEFAULT_GAVEL_DIR,
    throughputs_json: Path | str = DEFAULT_THROUGHPUTS,
    gpu_type: str = "v100",
    time_limit_seed: int = 0,
    gpus_per_server: int = 8,
) -> Workload:
    """All ``*.trace`` files of ``trace_dir`` merged into one workload (module docstring for every rule)."""
    trace_dir = Path(trace_dir)
    files = sorted(trace_dir.glob("*.trace")) if trace_dir.is_dir() else []
    if not files:
        raise row_error(trace_dir, None, "trace_dir", "no *.trace files here", "pass Gavel's msr/seed=N folder")
    table = load_throughputs(throughputs_json)
    lookup = ThroughputLookup(table, gpu_type, gpus_per_server, str(throughputs_json))
    rows: list[tuple[float, str, int, str, int, float]] = []
    for path in files:
        vc = path.stem
        with path.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                job_type, steps, arrival, scale = _parse_row(path, line, text)
                run = steps / lookup.steps_per_s(job_type, scale, (str(path), line))
                rows.append((arrival, vc, line, job_type, scale, run))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    runs = np.array([r[5] for r in rows])
    limits = user_time_limits(runs, time_limit_seed).tolist()
    model = gpu_type.upper()
    jobs = [
        SimJob(
            Job(
                id=f"philly-{vc}-{line:04d}",
                project=vc,
                time_limit_s=limit,
                gpus=scale,
                gpu_models=(model,),
                user=vc,
                name=job_type,
                submit_s=arrival,
                priority=PriorityClass.NORMAL,
                preemptible=True,
                checkpoint_interval_s=CHECKPOINT_S,
            ),
            run,
        )
        for (arrival, vc, line, job_type, scale, run), limit in zip(rows, limits, strict=True)
    ]
    tenants = {f.stem: TenantInfo(project=f.stem, organization=f.stem, program="philly") for f in files}
    description = (
        f"Gavel Philly-derived traces from {trace_dir}: {len(jobs)} jobs, {len(files)} VCs, {gpu_type}; "
        f"derived_throughput={lookup.derived} (nearest measured scale factor, linear scaling); "
        f"limit_over_90d={count_over_max_limit(runs)}; time limits seed {time_limit_seed}"
    )
    # run times are true on the trace's GPU type; on another model the twin scales them by this table (sim.speed)
    return Workload(
        name="philly",
        jobs=jobs,
        tenants=tenants,
        description=description,
        reference_model=model,
        job_type_throughputs=table,
    )
