"""Plotly helpers shared by the chart sections: one figure as an HTML fragment, downsampling, panel grids."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from kfabric.report.runs import FloatArray, Run, Timeline
from kfabric.report.tables import DAY_S

MAX_POINTS = 2_000


def figure_html(fig: go.Figure, height: int) -> str:
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


def empty_note(what: str) -> str:
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


def timeline_days(tl: Timeline) -> FloatArray:
    return tl.t_s / DAY_S


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def per_run_subplots(runs: Sequence[Run], y_title: str) -> tuple[go.Figure, int, int]:
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


def subplot_cell(i: int, cols: int) -> dict[str, int]:
    return {"row": i // cols + 1, "col": i % cols + 1}


HOVER_DAY = "day %{x:.2f}<br>%{y:,.1f}"
