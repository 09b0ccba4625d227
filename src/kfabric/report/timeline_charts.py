"""Chart sections drawn from ``timeline.csv``: allocated GPUs by owner and site, utilization, queue, power."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from kfabric.report.figures import (
    HOVER_DAY,
    MAX_POINTS,
    downsample,
    empty_note,
    figure_html,
    per_run_subplots,
    subplot_cell,
    timeline_days,
)
from kfabric.report.palette import part_colors, run_color
from kfabric.report.runs import FloatArray, Run
from kfabric.report.tables import fmt_power, metric_value, num


def stacked_gpus_chart(runs: Sequence[Run], attr: str, what: str) -> str:
    names: list[str] = []
    for run in runs:
        for name in getattr(run.timeline, attr):
            if name not in names:
                names.append(name)
    if not names or not any(r.timeline.t_s.size for r in runs):
        return empty_note(f"timeline.csv has no {what}:<name> columns or no rows")
    colors = part_colors(names)
    fig, rows, cols = per_run_subplots(runs, "GPUs")
    for i, run in enumerate(runs):
        tl = run.timeline
        parts: dict[str, FloatArray] = getattr(tl, attr)
        keys = [n for n in names if n in parts]
        x, ys = downsample(timeline_days(tl), [parts[k] for k in keys] + [tl.online_gpus])
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
                    hovertemplate=f"{html.escape(k)}<br>{HOVER_DAY} GPUs<extra>{html.escape(run.name)}</extra>",
                ),
                **subplot_cell(i, cols),
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=ys[-1],
                name="online GPUs",
                legendgroup="online",
                showlegend=i == 0,
                line={"width": 1.5, "color": "#222", "dash": "dot"},
                hovertemplate="online<br>" + HOVER_DAY + " GPUs<extra>" + html.escape(run.name) + "</extra>",
            ),
            **subplot_cell(i, cols),
        )
    note = (
        f'<p class="note">GPUs allocated per {what} (stacked), one panel per run; the dotted line is the online '
        "capacity.</p>"
    )
    return note + figure_html(fig, 380 * rows + 60)


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
        return empty_note("timeline.csv has no rows")
    fig = go.Figure()
    for i, run in enumerate(runs):
        x, (y,) = downsample(timeline_days(run.timeline), [series(run)])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=label(run),
                mode="lines",
                line={"width": 1.6, "color": run_color(i)},
                hovertemplate=hover + "<extra>" + html.escape(run.name) + "</extra>",
            )
        )
    fig.update_xaxes(title_text="day")
    fig.update_yaxes(title_text=y_title, **(yaxis or {}))
    return figure_html(fig, 420)


def _util_series(run: Run) -> FloatArray:
    tl = run.timeline
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(tl.online_gpus > 0, tl.allocated_gpus / tl.online_gpus, np.nan)
    return np.asarray(u * 100.0, dtype=np.float64)


def utilization_chart(runs: Sequence[Run]) -> str:
    def label(run: Run) -> str:
        u = num(run.summary.get("utilization"))
        return f"{run.name} (mean {u * 100:.1f}%)" if math.isfinite(u) else run.name

    note = '<p class="note">Allocated / online GPUs at each sample; the legend gives the run-wide average.</p>'
    return note + _overlay(
        runs, _util_series, "utilization (%)", label, "day %{x:.2f}<br>%{y:.1f}%", {"rangemode": "tozero"}
    )


def queue_chart(runs: Sequence[Run]) -> str:
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


def power_chart(runs: Sequence[Run]) -> str:
    sites: list[str] = []
    for run in runs:
        for s in run.timeline.power_mw:
            if s not in sites:
                sites.append(s)
    if not sites or not any(r.timeline.t_s.size for r in runs):
        return empty_note("timeline.csv has no power_mw:<site> columns or no rows")
    colors = part_colors(sites)
    fig, rows, cols = per_run_subplots(runs, "IT power (MW)")
    peaks: list[dict[str, float]] = []
    for i, run in enumerate(runs):
        tl = run.timeline
        keys = [s for s in sites if s in tl.power_mw]
        x, ys = downsample(timeline_days(tl), [tl.power_mw[k] for k in keys], how="max")
        days = timeline_days(tl)
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
                **subplot_cell(i, cols),
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
                    **subplot_cell(i, cols),
                )
        summary_peaks = run.summary.get("power_peak_mw")
        if isinstance(summary_peaks, dict):
            for k, v in summary_peaks.items():
                if math.isfinite(num(v)):
                    run_peaks[str(k)] = num(v)
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
    totals = "".join(f"<td>{fmt_power(metric_value(r, 'power_peak_total_mw'))}</td>" for r in runs)
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
    return note + figure_html(fig, 380 * rows + 60) + table


def _power_seen(runs: Sequence[Run]) -> set[str]:
    seen: set[str] = set()
    for r in runs:
        seen.update(r.timeline.power_mw)
    return seen
