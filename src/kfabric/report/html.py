"""One self-contained HTML report comparing simulation runs (``kfabric report RUN_DIR ...``).

plotly.js is embedded once, inline: the file opens offline. Timelines are downsampled to at most
``MAX_POINTS`` points per series and job-level charts summarise the (up to millions of) jobs first, so the file
stays small whatever the run length.

The sections live in :mod:`kfabric.report.tables` (summary table and number formatting),
:mod:`kfabric.report.timeline_charts` and :mod:`kfabric.report.job_charts`; :mod:`kfabric.report.figures` holds the
shared Plotly helpers and :mod:`kfabric.report.palette` the colours. This module assembles the page.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from kfabric.report.breakdown import delivered_section, fairness_section, reservations_section, starvation_section
from kfabric.report.figures import MAX_POINTS, downsample
from kfabric.report.job_charts import (
    TOP_TENANTS,
    SizeStats,
    cdf_points,
    jct_by_size,
    jct_by_size_chart,
    tenants_chart,
    wait_cdf_chart,
)
from kfabric.report.palette import PART_COLORS, RUN_COLORS
from kfabric.report.runs import Run, read_runs
from kfabric.report.tables import DAY_S, METRICS, Metric, days_text, fmt_duration, fmt_power, summary_table
from kfabric.report.timeline_charts import power_chart, queue_chart, stacked_gpus_chart, utilization_chart

__all__ = [
    "DAY_S",
    "MAX_POINTS",
    "METRICS",
    "PART_COLORS",
    "RUN_COLORS",
    "SECTION_TITLES",
    "TOP_TENANTS",
    "Metric",
    "SizeStats",
    "cdf_points",
    "downsample",
    "fmt_duration",
    "fmt_power",
    "jct_by_size",
    "render_report",
    "write_report",
]

SECTION_TITLES = {
    "summary": "Summary metrics",
    "starvation": "Who waited: never started, waits by size, the largest jobs, rejections",
    "delivered": "Where the GPU-hours went: owners, programs, lent capacity, preemption cost",
    "reservations": "Reserved capacity",
    "fairness": "Fairness against demand",
    "owner": "Allocated GPUs by owner",
    "site": "Allocated GPUs by site",
    "util": "GPU utilization over time",
    "queue": "Queue length over time",
    "wait": "Wait-time CDF",
    "jct": "Job completion time by job size",
    "tenants": "Share vs entitlement per tenant",
    "power": "Power draw by site",
}


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
        ("summary", summary_table(runs)),
        ("starvation", starvation_section(runs)),
        ("delivered", delivered_section(runs)),
        ("reservations", reservations_section(runs)),
        ("fairness", fairness_section(runs)),
        ("owner", stacked_gpus_chart(runs, "owners", "owner")),
        ("site", stacked_gpus_chart(runs, "sites", "site")),
        ("util", utilization_chart(runs)),
        ("queue", queue_chart(runs)),
        ("wait", wait_cdf_chart(runs)),
        ("jct", jct_by_size_chart(runs)),
        ("tenants", tenants_chart(runs)),
        ("power", power_chart(runs)),
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


def _header(runs: Sequence[Run]) -> str:
    infos = [r.info for r in runs]
    rows = [
        ("scenario", _distinct([i.get("scenario") for i in infos])),
        ("workload", _distinct([i.get("workload") for i in infos])),
        ("policies", ", ".join(r.name for r in runs)),
        ("seed", _distinct([i.get("seed") for i in infos])),
        ("days", _distinct([days_text(r) for r in runs])),
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
