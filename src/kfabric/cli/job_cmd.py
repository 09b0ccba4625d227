"""``kfabric job show JOBID`` (every field and the events timeline) and ``kfabric job events JOBID``."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.queue_cmd import (
    add_remote_args,
    connect,
    elapsed,
    emit_json,
    fmt_duration,
    fmt_gpus,
    fmt_nodes,
    fmt_time,
    parse_id,
    where_or_why,
)

_TIMES = ("submitted_at_s", "admitted_at_s", "started_at_s", "ended_at_s", "expected_start_s")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="one job in detail: its fields and its events")
    job_sub = job.add_subparsers(dest="job_command", metavar="ACTION")

    def job_help(_args: argparse.Namespace) -> int:
        job.print_help()
        return 2

    job.set_defaults(handler=job_help)
    show = job_sub.add_parser(
        "show", help="every field of a job, then its events", description="Show a job (--json: the API's job object)."
    )
    show.add_argument("job_id", metavar="JOBID")
    add_remote_args(show)
    show.set_defaults(handler=show_cmd)
    events = job_sub.add_parser(
        "events", help="a job's state changes with their reasons", description="A job's events, oldest first."
    )
    events.add_argument("job_id", metavar="JOBID")
    add_remote_args(events)
    events.set_defaults(handler=events_cmd)


def _value(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def fields(job: dict[str, Any], now_s: float) -> list[tuple[str, str]]:
    """Every field of ``job`` for people: times as local dates, durations Slurm-style, then the spec."""
    rows: list[tuple[str, str]] = []
    for key, value in job.items():
        if key == "spec":
            continue
        if key in _TIMES:
            rows.append((key.removesuffix("_s"), fmt_time(value)))
        elif key == "time_limit_s":
            rows.append(("time_limit", fmt_duration(value)))
        elif key == "nodes":
            rows.append(("nodes", fmt_nodes(job) or "-"))
        elif key == "gpus":
            rows.append(("gpus", fmt_gpus(job)))
        else:
            rows.append((key, _value(value)))
    started = job.get("started_at_s")
    rows.append(("run_time" if started is not None else "waited", fmt_duration(elapsed(job, now_s))))
    rows.append(("status", where_or_why(job)))
    rows += [(f"spec.{k}", _value(v)) for k, v in job.get("spec", {}).items()]
    return rows


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="Events")
    table.add_column("at", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("to", no_wrap=True)
    table.add_column("reason")
    for e in events:
        table.add_row(fmt_time(e["at_s"]), e["from_state"] or "-", e["to_state"], Text(e["reason"]))
    return table


def show_cmd(args: argparse.Namespace) -> int:
    job_id = parse_id(args.job_id)
    with connect(args) as client:
        job = client.job(job_id)
        if args.json:
            emit_json(job)
            return 0
        events = client.job_events(job_id)
    table = Table(title=f"Job {job['id']}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value")
    for key, value in fields(job, time.time()):
        table.add_row(key, Text(value))
    console = stdout_console()
    console.print(table)
    console.print(events_table(events))
    return 0


def events_cmd(args: argparse.Namespace) -> int:
    job_id = parse_id(args.job_id)
    with connect(args) as client:
        events = client.job_events(job_id)
    if args.json:
        emit_json(events)
    else:
        stdout_console().print(events_table(events))
    return 0
