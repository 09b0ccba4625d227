"""``kfabric queue [--state S ...] [--project P] [--all]``: the jobs you can see, like Slurm's ``squeue``.

This module also holds what every command that talks to the service shares: the ``--json``/``--url``/``--token``
options, :func:`connect`, and the Slurm-style formatting of durations, times, placements and reasons.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.client import DEFAULT_URL, Client

ACTIVE_STATES = ("pending", "admitted", "running", "preempted")
FINAL_STATES = ("succeeded", "failed", "cancelled", "timeout")
STATES = ACTIVE_STATES + FINAL_STATES
COLUMNS = ("JOBID", "PROJECT", "NAME", "USER", "STATE", "GPUS", "TIME", "NODES/REASON")


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


def fmt_duration(seconds: float | None) -> str:
    """Slurm's way: ``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def fmt_time(epoch_s: float | None) -> str:
    """A moment in this machine's local time, to the second; ``-`` when unset."""
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


def _ranges(gpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2,5``."""
    runs: list[list[int]] = []
    for g in sorted(gpus):
        if runs and runs[-1][1] + 1 == g:
            runs[-1][1] = g
        else:
            runs.append([g, g])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def fmt_nodes(job: dict[str, Any]) -> str:
    """Where a placed job runs: ``node:GPUS`` per node (``@250m`` for a fractional share)."""
    out = []
    for n in job.get("nodes", []):
        share = "" if n["gpu_milli"] >= 1000 else f"@{n['gpu_milli']}m"
        out.append(f"{n['node']}:{_ranges(n['gpus'])}{share}" if n["gpus"] else str(n["node"]))
    return " ".join(out)


def fmt_gpus(job: dict[str, Any]) -> str:
    return f"{job['gpu_milli'] / 1000:g}" if job["gpu_milli"] < 1000 else str(job["gpus"])


def elapsed(job: dict[str, Any], now_s: float) -> float | None:
    """Running time (so far, or in all once ended), or the wait so far of a job that has not started."""
    started, ended = job.get("started_at_s"), job.get("ended_at_s")
    if started is not None:
        return float(ended if ended is not None else now_s) - float(started)
    if ended is not None:
        return 0.0
    return now_s - float(job["submitted_at_s"])


def where_or_why(job: dict[str, Any]) -> str:
    """NODES/REASON: the placement of a placed job, else why it waits (and when it may start), or how it ended."""
    state = job["state"]
    if state in ("admitted", "running"):
        text = fmt_nodes(job)
        return f"{text} (cancelling)" if job.get("cancel_requested") else text
    if state in FINAL_STATES:
        code = job.get("exit_code")
        return str(job["reason"]) + (f" (exit {code})" if code is not None else "")
    text = f"{job['reason_code']}: {job['reason']}" if job.get("reason_code") else str(job["reason"])
    if job.get("expected_start_s") is not None:
        text += f"; expected start {fmt_time(job['expected_start_s'])}"
    return text


# ---- kfabric queue ---------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "queue",
        help="list jobs, like squeue",
        description="Jobs you can see, oldest first. By default only those not yet ended "
        f"({', '.join(ACTIVE_STATES)}); --all adds ended ones.",
    )
    p.add_argument(
        "--state",
        action="append",
        metavar="S",
        help=f"only jobs in this state (repeatable; one of: {', '.join(STATES)})",
    )
    p.add_argument("--project", metavar="P", help="only jobs of this project")
    p.add_argument("--all", action="store_true", help="include ended jobs")
    add_remote_args(p)
    p.set_defaults(handler=run)


def parse_states(values: list[str] | None) -> list[str] | None:
    """``--state`` values (repeatable, or comma-separated), checked against the job states."""
    if not values:
        return None
    states = [s.strip().lower() for v in values for s in v.split(",") if s.strip()]
    for s in states:
        if s not in STATES:
            raise UsageError(f"--state: unknown job state {s!r}; use one of: {', '.join(STATES)}")
    return states


def run(args: argparse.Namespace) -> int:
    states = parse_states(args.state)
    if states is None and not args.all:
        states = list(ACTIVE_STATES)
    with connect(args) as client:
        jobs = client.jobs(state=states, project=args.project)
    if args.json:
        emit_json(jobs)
        return 0
    now = time.time()
    table = Table(caption=f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}" + ("" if args.all else "; --all for ended"))
    for name in COLUMNS:
        right = name in ("JOBID", "GPUS", "TIME")
        table.add_column(name, justify="right" if right else "left", no_wrap=name in ("JOBID", "STATE", "TIME"))
    for j in jobs:
        table.add_row(
            str(j["id"]),
            Text(j["project"]),
            Text(j["name"]),
            Text(j["user"]),
            j["state"].upper(),
            fmt_gpus(j),
            fmt_duration(elapsed(j, now)),
            Text(where_or_why(j)),
        )
    stdout_console().print(table)
    return 0
