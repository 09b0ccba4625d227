"""One self-contained HTML report comparing simulation runs (``kfabric report RUN_DIR ...``).

plotly.js is embedded once, inline: the file opens offline. Timelines are downsampled to at most
``MAX_POINTS`` points per series and job-level charts summarise the (up to millions of) jobs first, so the file
stays small whatever the run length.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from kfabric.report.runs import SIZE_CLASSES, FloatArray, Run, Timeline, read_runs

MAX_POINTS = 2_000
TOP_TENANTS = 30
DAY_S = 86_400.0

RUN_COLORS = qualitative.Plotly
PART_COLORS = qualitative.D3 + qualitative.Dark24

SECTION_TITLES = {
    "summary": "Summary metrics",
    "owner": "Allocated GPUs by owner",
    "site": "Allocated GPUs by site",
    "util": "GPU utilization over time",
    "queue": "Queue length over time",
    "wait": "Wait-time CDF",
    "jct": "Job completion time by job size",
    "tenants": "Share vs entitlement per tenant",
    "power": "Power draw by site",
}


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


def _fmt_number(value: float, digits: int = 0) -> str:
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
    Metric("avg_wait_s", "mean wait", fmt_duration, "low"),
    Metric("p999_wait_s", "p99.9 wait", fmt_duration, "low"),
    Metric("avg_bounded_slowdown", "mean bounded slowdown", lambda v: _fmt_number(v, 2), "low"),
    Metric("preemptions", "preemptions", _fmt_number, "low"),
    Metric("lost_gpu_hours", "GPU time lost to preemption", lambda v: f"{_fmt_number(v, 1)} GPU-h", "low"),
    Metric("jain_index", "Jain index (share / entitlement)", lambda v: _fmt_number(v, 3), "high"),
    Metric("fragmentation_avg", "mean fragmentation", lambda v: f"{v * 100:.1f}%", "low"),
    Metric("power_peak_total_mw", "peak IT power, all sites", fmt_power, ""),
    Metric("jobs_finished", "jobs finished", _fmt_number, "high"),
    Metric("jobs_unfinished", "jobs unfinished", _fmt_number, "low"),
    Metric("cycles", "scheduling cycles", _fmt_number, ""),
    Metric("wall_s", "simulation wall time", fmt_duration, "low"),
    Metric("jobs_per_min", "simulated jobs / wall-clock min", _fmt_number, "high"),
)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _metric_value(run: Run, key: str) -> float:
    if key == "power_peak_total_mw":
        power = run.timeline.power_mw
        if power and run.timeline.t_s.size:
            return float(np.nanmax(np.sum(list(power.values()), axis=0)))
        peaks = run.summary.get("power_peak_mw")
        return sum(_num(v) for v in peaks.values()) if isinstance(peaks, dict) and peaks else math.nan
    return _num(run.summary.get(key))


# ---- public entry points -----------------------------------------------------------------------------------
def write_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Read the runs, render the report and write it to ``out`` (atomically). Returns ``out``."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = read_runs([Path(p) for p in run_dirs])
    text = render_report(runs)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ValueError(
            f"cannot write the report to {out} ({exc.strerror}); choose another place with --out FILE"
        ) from None
    return out


def render_report(runs: Sequence[Run]) -> str:
    sections = [
        ("summary", _summary_table(runs)),
        ("owner", _stacked_gpus(runs, "owners", "owner")),
        ("site", _stacked_gpus(runs, "sites", "site")),
        ("util", _utilization(runs)),
        ("queue", _queue(runs)),
        ("wait", _wait_cdf(runs)),
        ("jct", _jct_by_size(runs)),
        ("tenants", _tenants(runs)),
        ("power", _power(runs)),
    ]
    body = [_header(runs), _toc()]
    for key, content in sections:
        body.append(f'<section id="{key}"><h2>{html.escape(SECTION_TITLES[key])}</h2>\n{content}\n</section>')
    return _PAGE.format(
        title=html.escape("kfabric report — " + ", ".join(r.name for r in runs)),
        plotlyjs=get_plotlyjs(),
        body="\n".join(body),
    )


# ---- page parts --------------------------------------------------------------------------------------------
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1600px; padding: 1rem 2rem 4rem; color: #222; }}
h1 {{ margin-bottom: .2rem; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .3rem; margin-top: 2.5rem; }}
p.note {{ color: #555; font-size: .9rem; margin: .3rem 0 .6rem; }}
nav a {{ margin-right: 1rem; font-size: .9rem; }}
dl.what {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; margin: .8rem 0; }}
dl.what dt {{ font-weight: 600; }} dl.what dd {{ margin: 0; }}
table.cmp {{ border-collapse: collapse; font-size: .92rem; }}
table.cmp th, table.cmp td {{ border: 1px solid #ddd; padding: .3rem .7rem; }}
table.cmp td {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.cmp th[scope=row] {{ text-align: left; font-weight: normal; }}
table.cmp tr.group th {{ background: #f3f3f3; text-align: left; }}
table.cmp td.best {{ background: #d8f3dc; font-weight: 700; }}
table.cmp td.text {{ text-align: left; }}
.swatch {{ display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .35em; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
{body}
</body>
</html>
"""


def _distinct(values: Sequence[Any]) -> str:
    seen: list[str] = []
    for v in values:
        s = "–" if v is None or v == "" else str(v)
        if s not in seen:
            seen.append(s)
    return ", ".join(seen)


def _days_text(run: Run) -> str:
    days = run.info.get("days")
    sim_days = _num(run.summary.get("sim_days"))
    if isinstance(days, int | float) and not isinstance(days, bool):
        return f"{days:g}"
    if math.isfinite(sim_days):
        return f"until drained ({sim_days:.1f} simulated)"
    return "until drained"


def _header(runs: Sequence[Run]) -> str:
    infos = [r.info for r in runs]
    rows = [
        ("scenario", _distinct([i.get("scenario") for i in infos])),
        ("workload", _distinct([i.get("workload") for i in infos])),
        ("policies", ", ".join(r.name for r in runs)),
        ("seed", _distinct([i.get("seed") for i in infos])),
        ("days", _distinct([_days_text(r) for r in runs])),
        ("start", _distinct([i.get("start") for i in infos])),
    ]
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<header><h1>kfabric simulation report</h1>"
        f'<p class="note">{len(runs)} run(s), generated {made}. Runs: '
        + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs)
        + f'</p><dl class="what">{dl}</dl></header>'
    )


def _toc() -> str:
    links = " ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t in SECTION_TITLES.items())
    return f"<nav>{links}</nav>"


def _best(values: list[float], shown: list[str], better: str) -> set[int]:
    """Runs holding the best value; ties as displayed count as best too, and no highlight when all tie."""
    finite = [v for v in values if math.isfinite(v)]
    if not better or len(finite) < 2:
        return set()
    target = max(finite) if better == "high" else min(finite)
    target_text = shown[values.index(target)]
    best = {i for i, (v, t) in enumerate(zip(values, shown, strict=True)) if v == target or t == target_text}
    return set() if len(best) == len(values) else best


def _summary_table(runs: Sequence[Run]) -> str:
    head = "".join(
        f'<th scope="col"><span class="swatch" style="background:{_run_color(i)}"></span>{html.escape(r.name)}</th>'
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
        ("days", [_days_text(r) for r in runs]),
        ("jobs in jobs.csv", [f"{len(r.jobs):,}" for r in runs]),
    ]
    for label, cells in info_rows:
        tds = "".join(f'<td class="text">{html.escape(c)}</td>' for c in cells)
        lines.append(f'<tr><th scope="row">{html.escape(label)}</th>{tds}</tr>')
    lines.append(f'<tr class="group"><th colspan="{n + 1}">metrics (best value highlighted)</th></tr>')
    for m in METRICS:
        values = [_metric_value(r, m.key) for r in runs]
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
        '<p class="note">↓ lower is better, ↑ higher is better. JCT = end − submit; wait = first start − '
        "submit; utilization = allocated / online GPU-seconds.</p>"
    )
    return "\n".join(lines)


# ---- figure helpers ----------------------------------------------------------------------------------------
def _run_color(i: int) -> str:
    return str(RUN_COLORS[i % len(RUN_COLORS)])


def _part_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: str(PART_COLORS[i % len(PART_COLORS)]) for i, n in enumerate(names)}


def _figure_html(fig: go.Figure, height: int) -> str:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "v"},
        hoverlabel={"namelength": -1},
    )
    return str(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            config={"displaylogo": False, "responsive": True},
            default_width="100%",
            default_height=f"{height}px",
        )
    )


def _empty(what: str) -> str:
    return f'<p class="note">No data: {html.escape(what)}.</p>'


def downsample(x: FloatArray, ys: Sequence[FloatArray], how: str = "mean") -> tuple[FloatArray, list[FloatArray]]:
    """At most ``MAX_POINTS`` points: equal-size buckets of consecutive samples, averaged (or max'ed)."""
    n = x.size
    if n <= MAX_POINTS:
        return x, list(ys)
    starts = np.linspace(0, n, MAX_POINTS + 1).astype(np.int64)[:-1]
    sizes = np.diff(np.append(starts, n)).astype(np.float64)
    bx = np.add.reduceat(x, starts) / sizes
    out: list[FloatArray] = []
    for y in ys:
        y = np.nan_to_num(y, nan=0.0)
        out.append(np.maximum.reduceat(y, starts) if how == "max" else np.add.reduceat(y, starts) / sizes)
    return bx, out


def _days(tl: Timeline) -> FloatArray:
    return tl.t_s / DAY_S


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _per_run_subplots(runs: Sequence[Run], y_title: str) -> tuple[go.Figure, int, int]:
    rows, cols = _grid(len(runs))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        shared_xaxes="all",
        shared_yaxes="all",
        subplot_titles=[r.name for r in runs],
        horizontal_spacing=0.04,
        vertical_spacing=0.12 if rows > 1 else 0.08,
    )
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text=y_title, row=r, col=1)
        fig.update_xaxes(title_text="day", row=r)
    return fig, rows, cols


def _cell(i: int, cols: int) -> dict[str, int]:
    return {"row": i // cols + 1, "col": i % cols + 1}


_HOVER_DAY = "day %{x:.2f}<br>%{y:,.1f}"


# ---- sections ----------------------------------------------------------------------------------------------
def _stacked_gpus(runs: Sequence[Run], attr: str, what: str) -> str:
    names: list[str] = []
    for run in runs:
        for name in getattr(run.timeline, attr):
            if name not in names:
                names.append(name)
    if not names or not any(r.timeline.t_s.size for r in runs):
        return _empty(f"timeline.csv has no {what}:<name> columns or no rows")
    colors = _part_colors(names)
    fig, rows, cols = _per_run_subplots(runs, "GPUs")
    for i, run in enumerate(runs):
        tl = run.timeline
        parts: dict[str, FloatArray] = getattr(tl, attr)
        keys = [n for n in names if n in parts]
        x, ys = downsample(_days(tl), [parts[k] for k in keys] + [tl.online_gpus])
        for k, y in zip(keys, ys, strict=False):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    name=k,
                    legendgroup=k,
                    showlegend=i == 0 or k not in _seen_before(runs[:i], attr),
                    stackgroup=f"run{i}",
                    line={"width": 0.5, "color": colors[k]},
                    hovertemplate=f"{html.escape(k)}<br>{_HOVER_DAY} GPUs<extra>{html.escape(run.name)}</extra>",
                ),
                **_cell(i, cols),
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=ys[-1],
                name="online GPUs",
                legendgroup="online",
                showlegend=i == 0,
                line={"width": 1.5, "color": "#222", "dash": "dot"},
                hovertemplate="online<br>" + _HOVER_DAY + " GPUs<extra>" + html.escape(run.name) + "</extra>",
            ),
            **_cell(i, cols),
        )
    note = (
        f'<p class="note">GPUs allocated per {what} (stacked), one panel per run; the dotted line is the online '
        "capacity.</p>"
    )
    return note + _figure_html(fig, 380 * rows + 60)


def _seen_before(runs: Sequence[Run], attr: str) -> set[str]:
    seen: set[str] = set()
    for r in runs:
        seen.update(getattr(r.timeline, attr))
    return seen


def _overlay(
    runs: Sequence[Run],
    series: Callable[[Run], FloatArray],
    y_title: str,
    label: Callable[[Run], str],
    hover: str,
    yaxis: dict[str, Any] | None = None,
) -> str:
    if not any(r.timeline.t_s.size for r in runs):
        return _empty("timeline.csv has no rows")
    fig = go.Figure()
    for i, run in enumerate(runs):
        x, (y,) = downsample(_days(run.timeline), [series(run)])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=label(run),
                mode="lines",
                line={"width": 1.6, "color": _run_color(i)},
                hovertemplate=hover + "<extra>" + html.escape(run.name) + "</extra>",
            )
        )
    fig.update_xaxes(title_text="day")
    fig.update_yaxes(title_text=y_title, **(yaxis or {}))
    return _figure_html(fig, 420)


def _util_series(run: Run) -> FloatArray:
    tl = run.timeline
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(tl.online_gpus > 0, tl.allocated_gpus / tl.online_gpus, np.nan)
    return np.asarray(u * 100.0, dtype=np.float64)


def _utilization(runs: Sequence[Run]) -> str:
    def label(run: Run) -> str:
        u = _num(run.summary.get("utilization"))
        return f"{run.name} (mean {u * 100:.1f}%)" if math.isfinite(u) else run.name

    note = '<p class="note">Allocated / online GPUs at each sample; the legend gives the run-wide average.</p>'
    return note + _overlay(
        runs, _util_series, "utilization (%)", label, "day %{x:.2f}<br>%{y:.1f}%", {"rangemode": "tozero"}
    )


def _queue(runs: Sequence[Run]) -> str:
    def label(run: Run) -> str:
        q = run.timeline.queue
        return f"{run.name} (max {int(np.nanmax(q)):,})" if q.size else run.name

    note = '<p class="note">Jobs waiting in the queue at each sample.</p>'
    return note + _overlay(
        runs,
        lambda r: r.timeline.queue,
        "queued jobs",
        label,
        "day %{x:.2f}<br>%{y:,.0f} queued",
        {"rangemode": "tozero"},
    )


_LOG_TICKS = (
    (1.0, "1 s"),
    (10.0, "10 s"),
    (60.0, "1 min"),
    (600.0, "10 min"),
    (3_600.0, "1 h"),
    (6 * 3_600.0, "6 h"),
    (DAY_S, "1 d"),
    (7 * DAY_S, "1 w"),
    (30 * DAY_S, "30 d"),
    (365 * DAY_S, "1 y"),
)


def cdf_points(samples: FloatArray, floor: float = 1.0) -> tuple[FloatArray, FloatArray]:
    """Empirical CDF of ``samples`` (clipped below at ``floor``) at no more than ``MAX_POINTS`` ranks."""
    x = np.sort(samples[np.isfinite(samples)])
    n = x.size
    if n == 0:
        return x, x
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(np.int64))
    return np.maximum(x[idx], floor), (idx + 1) / n


def _wait_cdf(runs: Sequence[Run]) -> str:
    if not any(len(r.jobs) for r in runs):
        return _empty("jobs.csv has no jobs")
    fig = go.Figure()
    hi = 1.0
    for i, run in enumerate(runs):
        x, y = cdf_points(run.jobs.wait_s)
        if not x.size:
            continue
        hi = max(hi, float(x[-1]))
        zero = float(np.mean(run.jobs.wait_s[np.isfinite(run.jobs.wait_s)] < 1.0))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y * 100.0,
                name=f"{run.name} ({zero * 100:.0f}% start within 1 s)",
                mode="lines",
                line={"width": 1.8, "color": _run_color(i), "shape": "hv"},
                customdata=[fmt_duration(v) for v in x],
                hovertemplate="wait ≤ %{customdata}: %{y:.1f}% of jobs<extra>" + html.escape(run.name) + "</extra>",
            )
        )
    ticks = [(v, t) for v, t in _LOG_TICKS if v <= hi * 10]
    fig.update_xaxes(
        type="log",
        title_text="wait (first start − submit), log scale",
        tickvals=[v for v, _ in ticks],
        ticktext=[t for _, t in ticks],
        range=[-0.15, math.log10(hi) + 0.1],
    )
    fig.update_yaxes(title_text="jobs (%)", range=[0, 101])
    note = (
        '<p class="note">Share of finished jobs that waited at most <i>x</i>. Waits under 1 s are drawn at 1 s, '
        "so the height at the left edge is the share that started at once.</p>"
    )
    return note + _figure_html(fig, 450)


@dataclass(frozen=True)
class SizeStats:
    label: str
    n: int
    mean: float
    p50: float
    p99: float


def jct_by_size(run: Run) -> list[SizeStats]:
    jobs = run.jobs
    ok = np.isfinite(jobs.jct_s)
    code, jct = jobs.size_code[ok], jobs.jct_s[ok]
    order = np.lexsort((jct, code))
    code, jct = code[order], jct[order]
    bounds = np.searchsorted(code, np.arange(len(jobs.size_labels) + 1))
    out: list[SizeStats] = []
    for c, label in enumerate(jobs.size_labels):
        seg = jct[bounds[c] : bounds[c + 1]]
        if seg.size:
            out.append(
                SizeStats(label, int(seg.size), float(seg.mean()), float(np.median(seg)), float(np.percentile(seg, 99)))
            )
    return out


def _size_order(label: str) -> tuple[int, str]:
    return (SIZE_CLASSES.index(label), "") if label in SIZE_CLASSES else (len(SIZE_CLASSES), label)


def _jct_by_size(runs: Sequence[Run]) -> str:
    stats = [{s.label: s for s in jct_by_size(r)} for r in runs]
    labels = sorted({k for s in stats for k in s}, key=_size_order)
    if not labels:
        return _empty("jobs.csv has no finished jobs")
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, subplot_titles=["mean JCT", "median (p50) JCT"], horizontal_spacing=0.05
    )
    top = max((s.mean for st in stats for s in st.values()), default=0.0)
    unit, div = ("days", DAY_S) if top > 3 * DAY_S else ("hours", 3_600.0)
    for i, (run, st) in enumerate(zip(runs, stats, strict=True)):
        xs = [lb for lb in labels if lb in st]
        custom = [
            [f"{st[lb].n:,}", fmt_duration(st[lb].mean), fmt_duration(st[lb].p50), fmt_duration(st[lb].p99)]
            for lb in xs
        ]
        hover = (
            "size %{x} GPUs · %{customdata[0]} jobs<br>mean %{customdata[1]} · p50 %{customdata[2]} · "
            "p99 %{customdata[3]}<extra>" + html.escape(run.name) + "</extra>"
        )
        for col, attr in ((1, "mean"), (2, "p50")):
            fig.add_trace(
                go.Bar(
                    x=xs,
                    y=[getattr(st[lb], attr) / div for lb in xs],
                    name=run.name,
                    legendgroup=run.name,
                    showlegend=col == 1,
                    marker_color=_run_color(i),
                    customdata=custom,
                    hovertemplate=hover,
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="job size (GPUs)", categoryorder="array", categoryarray=labels)
    heights = [v for st in stats for s in st.values() for v in (s.mean, s.p50) if v > 0]
    log = bool(heights) and max(heights) / min(heights) > 30
    if log:  # classes differ by orders of magnitude: a linear axis would hide the small ones
        lo, hi = min(heights) / div, max(heights) / div
        ticks = [
            m * 10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)
        ]
        ticks = [t for t in ticks if lo / 2 <= t <= hi * 2]
        fig.update_yaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(title_text=f"JCT ({unit}{', log scale' if log else ''})", row=1, col=1)
    note = '<p class="note">Job completion time (end − submit) per job-size class; hover for counts and p99.</p>'
    return note + _figure_html(fig, 450)


def _tenant_table(run: Run) -> dict[str, tuple[float, float]]:
    tenants = run.summary.get("tenants")
    if not isinstance(tenants, dict):
        return {}
    out: dict[str, tuple[float, float]] = {}
    for name, t in tenants.items():
        if isinstance(t, dict):
            out[str(name)] = (_num(t.get("share")), _num(t.get("entitlement")))
    return out


def _tenants(runs: Sequence[Run]) -> str:
    tables = [_tenant_table(r) for r in runs]
    ent: dict[str, float] = {}
    for t in tables:
        for name, (_, e) in t.items():
            ent[name] = max(ent.get(name, 0.0), e if math.isfinite(e) else 0.0)
    if not ent:
        return _empty("summary.json has no tenants")
    names = sorted(ent, key=lambda n: (-ent[n], n))
    shown = names[:TOP_TENANTS]
    fig = go.Figure()
    # One entitlement series per distinct entitlement vector (runs of one scenario share it).
    groups: list[tuple[tuple[float, ...], list[str]]] = []
    for run, t in zip(runs, tables, strict=True):
        vec = tuple(round(t.get(n, (math.nan, 0.0))[1], 9) for n in shown)
        for g_vec, members in groups:
            if g_vec == vec:
                members.append(run.name)
                break
        else:
            groups.append((vec, [run.name]))
    for j, (vec, members) in enumerate(groups):
        label = "entitlement" if len(groups) == 1 else f"entitlement ({', '.join(members)})"
        fig.add_trace(
            go.Bar(
                x=shown,
                y=[v * 100 for v in vec],
                name=label,
                marker={"color": ["#9e9e9e", "#c8c8c8", "#6e6e6e"][j % 3], "line": {"color": "#555", "width": 1}},
                hovertemplate="%{x}<br>entitlement %{y:.2f}%<extra></extra>",
            )
        )
    for i, (run, t) in enumerate(zip(runs, tables, strict=True)):
        fig.add_trace(
            go.Bar(
                x=shown,
                y=[t.get(n, (0.0, 0.0))[0] * 100 for n in shown],
                name=f"share — {run.name}",
                marker_color=_run_color(i),
                hovertemplate="%{x}<br>share %{y:.2f}%<extra>" + html.escape(run.name) + "</extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(title_text="tenant (project)", tickangle=-40 if len(shown) > 8 else 0)
    fig.update_yaxes(title_text="% of service units", rangemode="tozero")
    extra = f" Showing the top {TOP_TENANTS} of {len(names)} tenants by entitlement." if len(names) > len(shown) else ""
    note = (
        '<p class="note">Each tenant\'s share of the service units delivered vs its entitlement (normalised over '
        f"active tenants).{extra}</p>"
    )
    return note + _figure_html(fig, 480 if len(shown) > 8 else 420)


def _power(runs: Sequence[Run]) -> str:
    sites: list[str] = []
    for run in runs:
        for s in run.timeline.power_mw:
            if s not in sites:
                sites.append(s)
    if not sites or not any(r.timeline.t_s.size for r in runs):
        return _empty("timeline.csv has no power_mw:<site> columns or no rows")
    colors = _part_colors(sites)
    fig, rows, cols = _per_run_subplots(runs, "IT power (MW)")
    peaks: list[dict[str, float]] = []
    for i, run in enumerate(runs):
        tl = run.timeline
        keys = [s for s in sites if s in tl.power_mw]
        x, ys = downsample(_days(tl), [tl.power_mw[k] for k in keys], how="max")
        days = _days(tl)
        run_peaks: dict[str, float] = {}
        for k, y in zip(keys, ys, strict=True):
            full = np.nan_to_num(tl.power_mw[k], nan=0.0)
            at = int(np.argmax(full)) if full.size else 0
            peak = float(full[at]) if full.size else math.nan
            run_peaks[k] = peak
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    name=k,
                    legendgroup=k,
                    showlegend=k not in _power_seen(runs[:i]),
                    mode="lines",
                    line={"width": 1.4, "color": colors[k]},
                    hovertemplate=f"{html.escape(k)}<br>day %{{x:.2f}}<br>%{{y:.3f}} MW<extra>"
                    + html.escape(run.name)
                    + "</extra>",
                ),
                **_cell(i, cols),
            )
            if full.size:
                fig.add_trace(
                    go.Scatter(
                        x=[days[at]],
                        y=[peak],
                        name=f"{k} peak",
                        legendgroup=k,
                        showlegend=False,
                        mode="markers",
                        marker={
                            "symbol": "triangle-down",
                            "size": 10,
                            "color": colors[k],
                            "line": {"color": "#222", "width": 1},
                        },
                        hovertemplate=f"{html.escape(k)} peak<br>%{{y:.3f}} MW on day %{{x:.2f}}<extra>"
                        + html.escape(run.name)
                        + "</extra>",
                    ),
                    **_cell(i, cols),
                )
        summary_peaks = run.summary.get("power_peak_mw")
        if isinstance(summary_peaks, dict):
            for k, v in summary_peaks.items():
                if math.isfinite(_num(v)):
                    run_peaks[str(k)] = _num(v)
        peaks.append(run_peaks)
    fig.update_yaxes(rangemode="tozero")
    head = "".join(f"<th scope=col>{html.escape(r.name)}</th>" for r in runs)
    body = []
    for s in sites:
        values = [p.get(s, math.nan) for p in peaks]
        tds = "".join(f"<td>{fmt_power(v)}</td>" for v in values)
        body.append(
            f'<tr><th scope="row"><span class="swatch" style="background:{colors[s]}"></span>{html.escape(s)}</th>'
            f"{tds}</tr>"
        )
    totals = "".join(f"<td>{fmt_power(_metric_value(r, 'power_peak_total_mw'))}</td>" for r in runs)
    body.append(f'<tr><th scope="row"><b>all sites (peak of the sum)</b></th>{totals}</tr>')
    table = (
        f'<table class="cmp"><thead><tr><th scope="col">peak IT power</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    note = (
        '<p class="note">IT power drawn per site, one panel per run; ▼ marks each site\'s peak. '
        + (
            "Downsampled points show the maximum of their interval. "
            if any(r.timeline.t_s.size > MAX_POINTS for r in runs)
            else ""
        )
        + "</p>"
    )
    return note + _figure_html(fig, 380 * rows + 60) + table


def _power_seen(runs: Sequence[Run]) -> set[str]:
    seen: set[str] = set()
    for r in runs:
        seen.update(r.timeline.power_mw)
    return seen
