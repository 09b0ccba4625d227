"""``kfabric job show JOBID`` (every field, the output files, the events timeline and, for a job that failed, the last
lines of its standard error), ``kfabric job events JOBID`` and ``kfabric job log JOBID [-f] [--err] [--tail N]`` (the
job's output through the API: ``GET /v1/jobs/{id}/log``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from kfabric.cli.cancel_cmd import parse_job_ref
from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import (
    add_remote_args,
    connect,
    elapsed,
    emit_json,
    fmt_duration,
    fmt_gpus,
    fmt_nodes,
    fmt_time,
    where_or_why,
)
from kfabric.client import ApiError, Client

_TIMES = ("submitted_at_s", "admitted_at_s", "started_at_s", "ended_at_s", "expected_start_s")
#: how many lines of standard error ``job show`` prints for a job that failed
FAILED_TAIL_LINES = 10
#: states whose standard error ``job show`` prints the end of
_FAILED = ("failed", "timeout")
#: seconds between two reads of ``job log -f`` once it has caught up with the file
FOLLOW_EVERY_S = 1.0


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
    log = job_sub.add_parser(
        "log",
        help="a job's output (standard output; --err: standard error)",
        description="Print a job's output file through the API (the job's user and operators): the whole file, or "
        "its last N lines with --tail; -f keeps printing what the job writes until it ends. On the sim backend the "
        "output is the job's simulated state changes.",
    )
    log.add_argument("job_id", metavar="JOBID")
    log.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the job ends")
    log.add_argument("--err", action="store_true", help="the standard error file (the same file unless -e was given)")
    log.add_argument("--tail", type=int, metavar="N", help="start with the last N lines")
    add_remote_args(log)
    log.set_defaults(handler=log_cmd)


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
    job_id = parse_job_ref(args.job_id)
    with connect(args) as client:
        job = client.job(job_id)
        if args.json:
            emit_json(job)
            return 0
        events = client.job_events(job_id)
        tail = _stderr_tail(client, job) if job.get("state") in _FAILED else None
    table = Table(title=f"Job {job['id']}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value")
    for key, value in fields(job, time.time()):
        table.add_row(key, Text(value))
    console = stdout_console()
    console.print(table)
    console.print(events_table(events))
    if tail is not None:
        console.print(tail)
    return 0


def _stderr_tail(client: Client, job: dict[str, Any]) -> Text:
    """The last lines of a failed job's standard error, titled with the file (or why they cannot be shown)."""
    try:
        got = client.job_log(int(job["id"]), "err", tail_lines=FAILED_TAIL_LINES)
    except ApiError as exc:
        return Text(f"standard error: not shown: {exc}")
    where = got.get("path") or "simulated"
    lines = got["data"].rstrip("\n")
    if not lines:
        note = f" ({got['note']})" if got.get("note") else ""
        return Text(f"standard error ({where}): empty{note}")
    return Text(f"last lines of standard error ({where}):\n{lines}")


def events_cmd(args: argparse.Namespace) -> int:
    job_id = parse_job_ref(args.job_id)
    with connect(args) as client:
        events = client.job_events(job_id)
    if args.json:
        emit_json(events)
    else:
        stdout_console().print(events_table(events))
    return 0


def log_cmd(args: argparse.Namespace) -> int:
    job_id = parse_job_ref(args.job_id)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail: expected a number of lines >= 0, got {args.tail}")
    stream = "err" if args.err else "out"
    with connect(args) as client:
        got = client.job_log(job_id, stream, tail_lines=args.tail)
        _emit(got, args.json)
        told = bool(got["data"])
        path = got["path"]
        while True:
            if not got["eof"]:
                got = client.job_log(job_id, stream, offset=got["next_offset"])
            elif args.follow and not got["final"]:
                time.sleep(FOLLOW_EVERY_S)
                offset = got["next_offset"]
                got = client.job_log(job_id, stream, offset=offset)
                if got["path"] != path or got["size"] < offset:
                    path = got["path"]  # a new attempt (re)wrote the file: from its start
                    got = client.job_log(job_id, stream)
            else:
                break
            _emit(got, args.json)
            told = told or bool(got["data"])
        if not told and got.get("note") and not args.json:
            print(f"kfabric: job {job_id}: {got['note']}", file=sys.stderr)
    return 0


def _emit(got: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(got), flush=True)
    elif got["data"]:
        sys.stdout.write(got["data"])
        sys.stdout.flush()
