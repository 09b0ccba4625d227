"""Number formatting and the summary table comparing the runs metric by metric (best value highlighted)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfabric.report.palette import run_color
from kfabric.report.runs import Run

DAY_S = 86_400.0


# ---- formatting --------------------------------------------------------------------------------------------
def fmt_duration(seconds: float) -> str:
    """Seconds in the unit a person reads: s, min, h or d."""
    if not math.isfinite(seconds):
        return "–"
    s = abs(seconds)
    if s < 10:
        return f"{seconds:.1f} s"
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3_600:
        return f"{seconds / 60:.1f} min"
    if s < 2 * DAY_S:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / DAY_S:.1f} d"


def fmt_power(mw: float) -> str:
    """Megawatts, in kW below 1 MW."""
    if not math.isfinite(mw):
        return "–"
    if abs(mw) < 1:
        return f"{mw * 1000:,.1f} kW" if abs(mw) < 0.01 else f"{mw * 1000:,.0f} kW"
    return f"{mw:,.2f} MW"


def fmt_number(value: float, digits: int = 0) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: Callable[[float], str]
    better: str  # "low", "high" or "" (no best)


METRICS: tuple[Metric, ...] = (
    Metric("utilization", "GPU utilization", lambda v: f"{v * 100:.1f}%", "high"),
    Metric("avg_jct_s", "mean JCT", fmt_duration, "low"),
    Metric("p50_jct_s", "median JCT", fmt_duration, "low"),
    Metric("p99_jct_s", "p99 JCT", fmt_duration, "low"),
    Metric("avg_wait_s", "mean wait (all submitted, censored)", fmt_duration, "low"),
    Metric("p999_wait_s", "p99.9 wait", fmt_duration, "low"),
    Metric("max_wait_s", "maximum wait", fmt_duration, "low"),
    Metric("jobs_never_started", "jobs never started", fmt_number, "low"),
    Metric("jobs_rejected", "jobs rejected at admission", fmt_number, ""),
    Metric("avg_bounded_slowdown", "mean bounded slowdown", lambda v: fmt_number(v, 2), "low"),
    Metric("preemptions", "preemptions", fmt_number, "low"),
    Metric("lost_gpu_hours", "GPU time lost to preemption", lambda v: f"{fmt_number(v, 1)} GPU-h", "low"),
    Metric("jain_demand", "Jain index (delivered / demand-capped fair share)", lambda v: fmt_number(v, 3), "high"),
    Metric("jain_entitlement", "Jain index (share / entitlement)", lambda v: fmt_number(v, 3), "high"),
    Metric("lent_gpu_hours", "lent capacity used", lambda v: f"{fmt_number(v)} GPU-h", ""),
    Metric("fragmentation_avg", "mean fragmentation", lambda v: f"{v * 100:.1f}%", "low"),
    Metric("power_peak_total_mw", "peak IT power, all sites", fmt_power, ""),
    Metric("jobs_finished", "jobs finished", fmt_number, "high"),
    Metric("jobs_unfinished", "jobs unfinished", fmt_number, "low"),
    Metric("cycles", "scheduling cycles", fmt_number, ""),
    Metric("wall_s", "simulation wall time", fmt_duration, "low"),
    Metric("jobs_per_min", "simulated jobs / wall-clock min", fmt_number, "high"),
)


def num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def metric_value(run: Run, key: str) -> float:
    if key == "power_peak_total_mw":
        power = run.timeline.power_mw
        if power and run.timeline.t_s.size:
            return float(np.nanmax(np.sum(list(power.values()), axis=0)))
        peaks = run.summary.get("power_peak_mw")
        return sum(num(v) for v in peaks.values()) if isinstance(peaks, dict) and peaks else math.nan
    if key == "jain_entitlement" and key not in run.summary:  # summaries written before the key was renamed
        key = "jain_index"
    return num(run.summary.get(key))


# ---- summary table -----------------------------------------------------------------------------------------
def days_text(run: Run) -> str:
    days = run.info.get("days")
    sim_days = num(run.summary.get("sim_days"))
    if isinstance(days, int | float) and not isinstance(days, bool):
        return f"{days:g}"
    if math.isfinite(sim_days):
        return f"until drained ({sim_days:.1f} simulated)"
    return "until drained"


def _best(values: list[float], shown: list[str], better: str) -> set[int]:
    """Runs holding the best value; ties as displayed count as best too, and no highlight when all tie."""
    finite = [v for v in values if math.isfinite(v)]
    if not better or len(finite) < 2:
        return set()
    target = max(finite) if better == "high" else min(finite)
    target_text = shown[values.index(target)]
    best = {i for i, (v, t) in enumerate(zip(values, shown, strict=True)) if v == target or t == target_text}
    return set() if len(best) == len(values) else best


def summary_table(runs: Sequence[Run]) -> str:
    head = "".join(
        f'<th scope="col"><span class="swatch" style="background:{run_color(i)}"></span>{html.escape(r.name)}</th>'
        for i, r in enumerate(runs)
    )
    lines = [f'<table class="cmp"><thead><tr><th scope="col">metric</th>{head}</tr></thead><tbody>']
    n = len(runs)
    lines.append(f'<tr class="group"><th colspan="{n + 1}">what ran</th></tr>')
    info_rows: list[tuple[str, list[str]]] = [
        ("policy", [str(r.info.get("policy", r.policy)) for r in runs]),
        ("scenario", [str(r.info.get("scenario", "–")) for r in runs]),
        ("workload", [str(r.info.get("workload", "–")) for r in runs]),
        ("seed", [str(r.info.get("seed", "–")) for r in runs]),
        ("days", [days_text(r) for r in runs]),
        ("jobs in jobs.csv", [f"{len(r.jobs):,}" for r in runs]),
    ]
    for label, cells in info_rows:
        tds = "".join(f'<td class="text">{html.escape(c)}</td>' for c in cells)
        lines.append(f'<tr><th scope="row">{html.escape(label)}</th>{tds}</tr>')
    lines.append(f'<tr class="group"><th colspan="{n + 1}">metrics (best value highlighted)</th></tr>')
    for m in METRICS:
        values = [metric_value(r, m.key) for r in runs]
        if not any(math.isfinite(v) for v in values):
            continue
        shown = [m.fmt(v) for v in values]
        best = _best(values, shown, m.better)
        tds = "".join(
            f'<td{" class=best" if i in best else ""} data-value="{v!r}">{html.escape(t)}</td>'
            for i, (v, t) in enumerate(zip(values, shown, strict=True))
        )
        hint = {"low": " ↓", "high": " ↑"}.get(m.better, "")
        lines.append(f'<tr><th scope="row">{html.escape(m.label)}{hint}</th>{tds}</tr>')
    lines.append("</tbody></table>")
    lines.append(
        '<p class="note">↓ lower is better, ↑ higher is better. JCT = end − submit (finished jobs); wait = first '
        "start − submit over every submitted job (a job never started counts up to the window's end); utilization "
        "= allocated / online GPU-seconds. Definitions: docs/metrics.md.</p>"
    )
    return "\n".join(lines)
