"""``kfabric queue``: the jobs you can see, like Slurm's ``squeue`` (``-u``, ``--me``, ``-A``, ``-p``, ``-t``,
``--format``, ``--sort``, ``--start``).

Filters run on the server (``GET /v1/jobs?user=&project=&pool=&state=``), so a user's view of a 20,000-job queue
fetches only their jobs. Long lists and output that is not a terminal are written as plain columns (no table
widget), so 20,000 lines print in well under a second (``benchmarks/bench_queue_print.py``).

This module also holds what every command that talks to the service shares: the ``--json``/``--url``/``--token``
options, :func:`connect`, and the Slurm-style formatting of durations, times, placements and reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kfabric.cli.errors import UsageError
from kfabric.cli.queue_fields import (
    DEFAULT,
    FIELDS,
    START_VIEW,
    fmt_duration,
    fmt_gpus,
    fmt_nodes,
    fmt_time,
    fold_arrays,
    parse_format,
    parse_sort,
    plain_lines,
    sort_jobs,
    where_or_why,
)
from kfabric.client import DEFAULT_URL, Client
from kfabric.model.suggest import did_you_mean

ACTIVE_STATES = ("pending", "admitted", "running", "preempted")
FINAL_STATES = ("succeeded", "failed", "cancelled", "timeout")
STATES = ACTIVE_STATES + FINAL_STATES
#: Slurm's state names and codes for kfabric's (``-t PD,R``, ``-t completed``)
STATE_ALIASES = {
    "pd": "pending", "r": "running", "cf": "admitted", "configuring": "admitted", "pr": "preempted",
    "cd": "succeeded", "completed": "succeeded", "f": "failed", "ca": "cancelled", "canceled": "cancelled",
    "to": "timeout", "s": "preempted", "suspended": "preempted",
}  # fmt: skip
#: above this many lines a terminal gets plain columns too (a table widget lays out every row first)
PLAIN_ABOVE = 300
__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "STATES",
    "add_remote_args",
    "connect",
    "elapsed",
    "emit_json",
    "fmt_duration",
    "fmt_gpus",
    "fmt_nodes",
    "fmt_time",
    "parse_id",
    "parse_states",
    "where_or_why",
]


# ---- shared by the service commands ----------------------------------------------------------------------


def add_remote_args(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--url`` and ``--token``, as every command that talks to the service takes them."""
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of text")
    parser.add_argument("--url", help=f"server URL (default: $KFABRIC_URL, else {DEFAULT_URL})")
    parser.add_argument(
        "--token", help="API token (default: $KFABRIC_TOKEN, the file $KFABRIC_TOKEN_FILE, or .kfabric/operator.token)"
    )


def connect(args: argparse.Namespace) -> Client:
    """The client for the command's ``--url``/``--token``, with the environment's defaults."""
    return Client.from_env(args.url, args.token)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def parse_id(text: str, what: str = "JOBID") -> int:
    """A positive numeric id, or a :class:`UsageError` naming the argument."""
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{what}: expected a number such as 42, got {text!r} (kfabric queue lists job ids)")
    return int(value)


def elapsed(job: dict[str, Any], now_s: float) -> float | None:
    """Running time (so far, or in all once ended), or the wait so far of a job that has not started."""
    started, ended = job.get("started_at_s"), job.get("ended_at_s")
    if started is not None:
        return float(ended if ended is not None else now_s) - float(started)
    if ended is not None:
        return 0.0
    return now_s - float(job["submitted_at_s"])


# ---- kfabric queue ---------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "queue",
        help="list jobs, like squeue",
        description="Jobs you can see, oldest first. By default only those not yet ended "
        f"({', '.join(ACTIVE_STATES)}); --all adds ended ones. Fields for --format and --sort: "
        f"{', '.join(FIELDS)} (or squeue's %i %j %u %T %M %D %R letters). TIME is the run time "
        "(0:00 until the job runs). Pending tasks of an array show as one line, 12_[5-99%10].",
    )
    p.add_argument(
        "-t",
        "--states",
        "--state",
        dest="state",
        action="append",
        metavar="STATES",
        help=f"only jobs in these states (comma-separated or repeated; {', '.join(STATES)}; Slurm's PD, R, CD, "
        "CA, F, TO too; 'all' for every state)",
    )
    p.add_argument("-u", "--user", action="append", metavar="USER", help="only jobs of these users (comma-separated)")
    p.add_argument("--me", action="store_true", help="only your own jobs")
    p.add_argument("-A", "--project", "--account", dest="project", metavar="PROJECT", help="only jobs of this project")
    p.add_argument("-p", "--pool", "--partition", dest="pool", metavar="POOL", help="only jobs placed on this pool")
    p.add_argument("--all", action="store_true", help="include ended jobs")
    p.add_argument(
        "-o", "--format", metavar="FIELDS", help="columns, e.g. id,name,user,state,reason,time,gpus,pool,start,submit"
    )
    p.add_argument("-S", "--sort", metavar="KEYS", help="sort by these fields (comma-separated; -FIELD descending)")
    p.add_argument(
        "--start",
        action="store_true",
        help="pending jobs with their expected start times, soonest first (like squeue --start)",
    )
    p.add_argument("--noheader", action="store_true", help="no header line and no count")
    add_remote_args(p)
    p.set_defaults(handler=run)


def parse_states(values: list[str] | None) -> list[str] | None:
    """``--state`` values (repeatable, or comma-separated), checked against the job states; ``all`` is every
    state (None)."""
    if not values:
        return None
    out: list[str] = []
    for raw in (s.strip() for v in values for s in v.split(",")):
        s = raw.lower()
        if not s:
            continue
        if s == "all":
            return None
        s = STATE_ALIASES.get(s, s)
        if s not in STATES:
            raise UsageError(
                f"--state: unknown job state {raw!r}{did_you_mean(raw, STATES)}; use one of: {', '.join(STATES)}"
            )
        if s not in out:
            out.append(s)
    return out


def _users(args: argparse.Namespace, client: Client) -> list[str] | None:
    names = [u.strip() for v in args.user or () for u in v.split(",") if u.strip()]
    if args.me:
        names.append(str(client.whoami()["name"]))
    return names or None


def run(args: argparse.Namespace) -> int:
    fields = parse_format(args.format) if args.format else (START_VIEW if args.start else DEFAULT)
    sort = parse_sort(args.sort) if args.sort else ((("start", False), ("id", False)) if args.start else ())
    states = parse_states(args.state)
    if args.start:
        states = ["pending"]
    elif states is None and not args.all and not args.state:
        states = list(ACTIVE_STATES)
    with connect(args) as client:
        jobs = client.jobs(state=states, project=args.project, user=_users(args, client), pool=args.pool)
    if args.json:
        emit_json(jobs)
        return 0
    now = time.time()
    if sort:
        jobs = sort_jobs(jobs, sort, now)
    shown = fold_arrays(jobs)
    caption = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}"
    if len(shown) != len(jobs):
        caption += f" on {len(shown)} lines (pending array tasks folded)"
    if not args.all and not args.state and not args.start:
        caption += "; --all for ended"
    if len(shown) > PLAIN_ABOVE or not sys.stdout.isatty():
        out = sys.stdout
        out.write("\n".join(plain_lines(fields, shown, now, header=not args.noheader)))
        out.write("\n" if shown or not args.noheader else "")
        if not args.noheader:
            out.write(caption + "\n")
        return 0
    # a short list on a terminal: a table (rich costs ~80 ms to import, so only here)
    from rich.table import Table
    from rich.text import Text

    from kfabric.cli.console import stdout_console

    table = Table(caption=None if args.noheader else caption, show_header=not args.noheader)
    for name in fields:
        f = FIELDS[name]
        table.add_column(f.header, justify="right" if f.right else "left", no_wrap=name in ("id", "state", "time"))
    for j in shown:
        table.add_row(*(Text(FIELDS[name].text(j, now)) for name in fields))
    stdout_console().print(table)
    return 0
