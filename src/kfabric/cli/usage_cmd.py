"""``kfabric usage [--by GROUP] [--since DAY] [--until DAY] [--csv]``: GPU-hours and service units, like
``sreport``. Days are UTC; ``--until`` is exclusive (``--since 2026-01-01 --until 2026-02-01`` is January)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, time

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.fleet_cmd import parse_day
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json

GROUPS = ("project", "organization", "program", "site", "provider", "gpu_model")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "usage",
        help="GPU-hours and service units by project, organization, program, site, provider or GPU model",
        description="Usage you may see, grouped; charged SU is after the program's discount.",
    )
    p.add_argument("--by", default="project", metavar="GROUP", help=f"one of: {', '.join(GROUPS)} (default project)")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="from the start of this day (UTC)")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="up to the start of this day (UTC), exclusive")
    p.add_argument("--csv", action="store_true", help="print the API's CSV export")
    add_remote_args(p)
    p.set_defaults(handler=run)


def day_start_s(text: str, flag: str) -> float:
    """Seconds since the epoch at 00:00 UTC of the day ``text`` (``YYYY-MM-DD``)."""
    return datetime.combine(parse_day(text, flag), time(0), tzinfo=UTC).timestamp()


def _amount(value: float) -> str:
    """Two decimals, or two significant digits for the small amounts of short test jobs (not a bare 0.00)."""
    return f"{value:,.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def run(args: argparse.Namespace) -> int:
    if args.by not in GROUPS:
        raise UsageError(f"--by: cannot group usage by {args.by!r}; use one of: {', '.join(GROUPS)}")
    if args.csv and args.json:
        raise UsageError("--csv and --json: choose one output format")
    since = day_start_s(args.since, "--since") if args.since else None
    until = day_start_s(args.until, "--until") if args.until else None
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until {args.until} must be after --since {args.since} (the end is exclusive)")
    with connect(args) as client:
        answer = client.usage(args.by, since, until, csv=args.csv)
    if isinstance(answer, str):
        print(answer, end="" if answer.endswith("\n") else "\n")
        return 0
    if args.json:
        emit_json(answer)
        return 0
    span = f"{args.since or 'start'} .. {args.until or 'now'}"
    caption = "SU-hours as grants count them; charged: after the program's discount"
    table = Table(title=f"Usage by {args.by} ({span}, UTC)", caption=caption)
    table.add_column(args.by, no_wrap=True)
    for name in ("GPU-hours", "SU-hours", "charged SU-hours", "records"):
        table.add_column(name, justify="right")
    totals = [0.0, 0.0, 0.0, 0.0]
    for row in answer:
        values = (row["gpu_hours"], row["su_hours"], row["charged_su_hours"], row["records"])
        table.add_row(Text(str(row[args.by])), *(_amount(v) for v in values[:3]), f"{row['records']:,}")
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    if len(answer) > 1:
        table.add_section()
        table.add_row("total", *(_amount(v) for v in totals[:3]), f"{int(totals[3]):,}")
    stdout_console().print(table)
    return 0
