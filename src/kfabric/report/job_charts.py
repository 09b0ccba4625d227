"""Chart sections drawn from the jobs and tenants: wait-time CDF, JCT by job size, share vs entitlement."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kfabric.report.figures import MAX_POINTS, empty_note, figure_html
from kfabric.report.palette import run_color
from kfabric.report.runs import SIZE_CLASSES, FloatArray, Run
from kfabric.report.tables import DAY_S, fmt_duration, num

TOP_TENANTS = 30


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


def wait_cdf_chart(runs: Sequence[Run]) -> str:
    if not any(len(r.jobs) for r in runs):
        return empty_note("jobs.csv has no jobs")
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
                line={"width": 1.8, "color": run_color(i), "shape": "hv"},
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
        '<p class="note">Share of submitted jobs that waited at most <i>x</i>; a job never started counts with its '
        "wait up to the window's end (censored), so the curve does not reach 100% before the longest such wait. "
        "Waits under 1 s are drawn at 1 s, so the height at the left edge is the share that started at once.</p>"
    )
    return note + figure_html(fig, 450)


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


def jct_by_size_chart(runs: Sequence[Run]) -> str:
    stats = [{s.label: s for s in jct_by_size(r)} for r in runs]
    labels = sorted({k for s in stats for k in s}, key=_size_order)
    if not labels:
        return empty_note("jobs.csv has no finished jobs")
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
                    marker_color=run_color(i),
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
    return note + figure_html(fig, 450)


def _tenant_table(run: Run) -> dict[str, tuple[float, float]]:
    tenants = run.summary.get("tenants")
    if not isinstance(tenants, dict):
        return {}
    out: dict[str, tuple[float, float]] = {}
    for name, t in tenants.items():
        if isinstance(t, dict):
            out[str(name)] = (num(t.get("share")), num(t.get("entitlement")))
    return out


def tenants_chart(runs: Sequence[Run]) -> str:
    tables = [_tenant_table(r) for r in runs]
    ent: dict[str, float] = {}
    for t in tables:
        for name, (_, e) in t.items():
            ent[name] = max(ent.get(name, 0.0), e if math.isfinite(e) else 0.0)
    if not ent:
        return empty_note("summary.json has no tenants")
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
                marker_color=run_color(i),
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
    return note + figure_html(fig, 480 if len(shown) > 8 else 420)
