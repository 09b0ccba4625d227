"""``kfabric report RUN_DIR [RUN_DIR ...]``: one self-contained HTML file comparing simulation runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from kfabric.cli.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="write one self-contained HTML report comparing simulation runs",
        description=(
            "Reads run directories written by `kfabric simulate` (jobs.csv, timeline.csv, summary.json) and writes one "
            "HTML file with charts and a metric comparison; it opens offline (plotly.js is embedded)."
        ),
    )
    report.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run directory; give several to compare"
    )
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to write the HTML (default: report.html next to the first run directory)",
    )
    report.set_defaults(handler=_report)


def default_out(first_run_dir: Path) -> Path:
    return first_run_dir.resolve().parent / "report.html"


def _report(args: argparse.Namespace) -> int:
    from kfabric.report.html import write_report  # plotly is imported only when a report is made

    run_dirs: list[Path] = list(args.run_dirs)
    out: Path = args.out if args.out is not None else default_out(run_dirs[0])
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name, e.g. --out {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: give a file name ending in .html, e.g. --out {out.with_suffix('.html')}")
    path = write_report(run_dirs, out)
    size_mb = path.stat().st_size / 1e6
    print(f"report: {path} ({size_mb:.1f} MB, {len(run_dirs)} run(s))")
    return 0
