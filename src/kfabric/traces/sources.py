"""One entry point for every workload source: ``load_workload("philly", ...)``, ``"national:scale=0.5"``...

Specs (paths default to ``../shared/traces`` beside the project root):

- ``philly[:DIR]`` — Gavel's Philly-derived traces (:mod:`kfabric.traces.philly`); the throughput JSON is looked
  up in ``DIR`` and its three parent folders, else the shared default;
- ``openb[:PODS_CSV]`` — Alibaba openb pods in time (:mod:`kfabric.traces.openb`);
- ``tiresias[:CSV]`` — Tiresias' job list (:mod:`kfabric.traces.tiresias`);
- ``national[:scale=X,load=Y,on=YYYY-MM-DD]`` — the synthetic national workload for the scenario
  (:mod:`kfabric.traces.national`), ``days`` long (7 when not given);
- ``history:DB_URL[,since=YYYY-MM-DD]`` — what the live service received (:mod:`kfabric.traces.history`).

``seed`` seeds the time limits of the trace readers and everything of the synthetic generator. ``days``, when
given, drops trace jobs arriving after that many days (and tenants left without jobs).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

from kfabric.scenarios.loader import Scenario
from kfabric.sim.workload import Workload
from kfabric.traces.history import read_history
from kfabric.traces.national import DEFAULT_LOAD, synthetic_national
from kfabric.traces.openb import DEFAULT_PODS_CSV, read_openb_pods
from kfabric.traces.philly import DAY_S, DEFAULT_GAVEL_DIR, DEFAULT_THROUGHPUTS, THROUGHPUTS_NAME, read_gavel
from kfabric.traces.tiresias import DEFAULT_CSV as DEFAULT_TIRESIAS_CSV
from kfabric.traces.tiresias import read_tiresias

SPECS = (
    "philly[:DIR]",
    "openb[:PODS_CSV]",
    "tiresias[:CSV]",
    "national[:scale=X,load=Y,on=YYYY-MM-DD]",
    "history:DB_URL[,since=YYYY-MM-DD]",
)
DEFAULT_NATIONAL_DAYS = 7.0


def _bad(spec: str, problem: str) -> ValueError:
    return ValueError(f"workload {spec!r}: {problem} (fix: use one of {', '.join(SPECS)})")


def find_throughputs(trace_dir: Path) -> Path:
    """Gavel's throughput JSON next to a trace folder or up to three folders above it, else the default."""
    for folder in [trace_dir, *list(trace_dir.resolve().parents)[:3]]:
        candidate = folder / THROUGHPUTS_NAME
        if candidate.is_file():
            return candidate
    return DEFAULT_THROUGHPUTS


def _national_options(spec: str, text: str) -> tuple[float, float, date | None]:
    scale, load, on = 1.0, DEFAULT_LOAD, None
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if key not in ("scale", "load", "on") or not sep:
            raise _bad(spec, f"unknown national option {item!r} (options: scale=X, load=Y, on=YYYY-MM-DD)")
        try:
            if key == "on":
                on = date.fromisoformat(value)
            elif key == "scale":
                scale = float(value)
            else:
                load = float(value)
        except ValueError:
            raise _bad(spec, f"cannot read option {item!r} (e.g. scale=0.5, load=0.9, on=2027-01-01)") from None
    if scale <= 0 or not 0 < load <= 2:
        raise _bad(spec, f"scale must be > 0 and load in (0, 2], got scale={scale}, load={load}")
    return scale, load, on


def load_workload(spec: str, scenario: Scenario | None, days: float | None, seed: int) -> Workload:
    """The workload a spec names (module docstring); unknown specs raise ``ValueError`` listing the valid ones."""
    kind, _, arg = spec.strip().partition(":")
    if days is not None and not days > 0:
        raise ValueError(f"days must be > 0 when given, got {days} (fix: pass e.g. days=7, or no days)")
    if kind == "national":
        if scenario is None:
            raise _bad(spec, "the synthetic national workload needs a scenario (e.g. korea-2030)")
        scale, load, on = _national_options(spec, arg)
        return synthetic_national(scenario, days or DEFAULT_NATIONAL_DAYS, seed, scale, load, on)
    if kind == "philly":
        trace_dir = Path(arg) if arg else DEFAULT_GAVEL_DIR
        workload = read_gavel(trace_dir, find_throughputs(trace_dir), time_limit_seed=seed)
    elif kind == "openb":
        workload = read_openb_pods(Path(arg) if arg else DEFAULT_PODS_CSV, time_limit_seed=seed)
    elif kind == "history":
        workload = read_history(arg)
    elif kind == "tiresias":
        workload = read_tiresias(Path(arg) if arg else DEFAULT_TIRESIAS_CSV, time_limit_seed=seed)
    else:
        raise _bad(spec, f"unknown workload source {kind!r}")
    return workload if days is None else first_days(workload, days)


def first_days(workload: Workload, days: float) -> Workload:
    """The jobs arriving within the first ``days`` days, and the tenants that still have jobs."""
    horizon = days * DAY_S
    jobs = [j for j in workload.jobs if j.job.submit_s <= horizon]
    used = {j.job.project for j in jobs}
    tenants = {name: info for name, info in workload.tenants.items() if name in used}
    note = f"{workload.description}; first {days:g} days: {len(jobs)} of {len(workload.jobs)} jobs"
    return replace(workload, jobs=jobs, tenants=tenants, description=note)
