"""``kfabric acct [-S START] [-E END] [-u USER] [-A PROJECT] [-s STATES] [--format FIELDS] [--csv]``: per-job
accounting like Slurm's ``sacct`` (``GET /v1/acct``, ``service/acct.py``).

The window is sacct's: jobs eligible or running in ``[START, END)``; START defaults to 00:00 today (local time),
END to now. Times: ``2026-03-01``, ``2026-03-01T14:00``, ``now``, ``today``, ``now-2days``, ``now-6hours``.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, parse_states
from kfabric.cli.queue_fields import fmt_duration, fmt_time, ranges
from kfabric.model.suggest import did_you_mean

Row = dict[str, Any]
_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60, "h": 3600,
          "hour": 3600, "hours": 3600, "d": 86_400, "day": 86_400, "days": 86_400, "week": 604_800,
          "weeks": 604_800}  # fmt: skip
_RELATIVE = re.compile(r"^now\s*([+-])\s*(\d+)\s*([a-z]*)$")


def _amount(value: float) -> str:
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def _job_id(r: Row) -> str:
    array, task = r.get("array_job_id"), r.get("array_task_id")
    return f"{array}_{task}" if array is not None and task is not None else str(r["id"])


def _nodes(r: Row) -> str:
    """``gpu[1-3],cpu7``: node names with a shared prefix folded, as Slurm writes node lists."""
    groups: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in r.get("nodes") or []:
        m = re.fullmatch(r"(.*?)(\d+)", name)
        if m is None:
            plain.append(name)
        else:
            groups.setdefault(m.group(1), []).append(int(m.group(2)))
    out = [f"{p}[{ranges(v)}]" if len(v) > 1 else f"{p}{v[0]}" for p, v in groups.items()]
    return ",".join(out + plain) or "-"


#: name -> (header, text of a row, right-aligned)
FIELDS: dict[str, tuple[str, Callable[[Row], str], bool]] = {
    "id": ("JOBID", _job_id, True),
    "name": ("NAME", lambda r: str(r["name"]), False),
    "user": ("USER", lambda r: str(r["user"]), False),
    "project": ("ACCOUNT", lambda r: str(r["project"]), False),
    "state": ("STATE", lambda r: str(r["state"]).upper(), False),
    "submit": ("SUBMIT", lambda r: fmt_time(r["submitted_at_s"]), False),
    "start": ("START", lambda r: fmt_time(r["started_at_s"]), False),
    "end": ("END", lambda r: fmt_time(r["ended_at_s"]), False),
    "elapsed": ("ELAPSED", lambda r: fmt_duration(r["elapsed_s"]), True),
    "gpus": ("GPUS", lambda r: f"{r['gpu_milli'] / 1000:g}" if r["gpu_milli"] < 1000 else str(r["gpus"]), True),
    "gpuhours": ("GPU_HOURS", lambda r: _amount(r["gpu_hours"]), True),
    "su": ("SU_HOURS", lambda r: _amount(r["su_hours"]), True),
    "charge": ("CHARGED_SU", lambda r: _amount(r["charged_su_hours"]), True),
    "exitcode": ("EXIT", lambda r: "" if r["exit_code"] is None else str(r["exit_code"]), True),
    "nodelist": ("NODELIST", _nodes, False),
}
ALIASES = {"jobid": "id", "account": "project", "submittime": "submit", "starttime": "start", "endtime": "end",
           "su_hours": "su", "gpu_hours": "gpuhours", "charged": "charge", "exit": "exitcode",
           "nodes": "nodelist", "alloctres": "gpus", "jobname": "name"}  # fmt: skip
DEFAULT = ("id", "name", "user", "project", "state", "start", "elapsed", "gpus", "gpuhours", "su", "charge",
           "exitcode", "nodelist")  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "acct",
        help="per-job accounting over a window, like sacct",
        description="Jobs you may see that were eligible or running between START and END, with elapsed time, "
        "GPU-hours, SU-hours and the charge (SU-hours after the program's discount), exit code and nodes. "
        f"Fields: {', '.join(FIELDS)}.",
    )
    p.add_argument("-S", "--starttime", metavar="START", help="window start (default: 00:00 today, local time)")
    p.add_argument("-E", "--endtime", metavar="END", help="window end (default: now)")
    p.add_argument("-u", "--user", action="append", metavar="USER", help="only these users (comma-separated)")
    p.add_argument("-A", "--project", "--account", dest="project", metavar="PROJECT", help="only this project")
    p.add_argument("-s", "--state", action="append", metavar="STATES", help="only jobs in these states")
    p.add_argument("-o", "--format", metavar="FIELDS", help="columns, e.g. id,state,elapsed,gpuhours,charge")
    p.add_argument("--csv", action="store_true", help="comma-separated values with a header line")
    add_remote_args(p)
    p.set_defaults(handler=run)


def parse_when(text: str, flag: str, now_s: float) -> float:
    """A moment: ISO date or date-time (local), ``now``, ``today``/``midnight``, ``now-2days``."""
    value = text.strip().lower()
    if value == "now":
        return now_s
    if value in ("today", "midnight"):
        return datetime.fromtimestamp(now_s).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    m = _RELATIVE.match(value)
    if m is not None:
        unit = _UNITS.get(m.group(3) or "s")
        if unit is None:
            raise UsageError(f"{flag}: unknown unit {m.group(3)!r}{did_you_mean(m.group(3), _UNITS)} in {text!r}")
        return now_s + (1 if m.group(1) == "+" else -1) * int(m.group(2)) * unit
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"{flag}: {text!r} is not a time; use 2026-03-01, 2026-03-01T14:00, now, today or now-2days"
        ) from None


def parse_fields(text: str) -> tuple[str, ...]:
    out = []
    for raw in (n for n in re.split(r"[,\s]+", text) if n):
        key = raw.lower()
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise UsageError(f"--format: unknown field {raw!r}{did_you_mean(raw, [*FIELDS, *ALIASES])}; "
                             f"fields: {', '.join(FIELDS)}")  # fmt: skip
        out.append(name)
    if not out:
        raise UsageError("--format: name at least one field, e.g. --format id,state,elapsed")
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    if args.csv and args.json:
        raise UsageError("--csv and --json: choose one output format")
    now = time.time()
    start = parse_when(args.starttime or "today", "-S/--starttime", now)
    end = parse_when(args.endtime, "-E/--endtime", now) if args.endtime else None
    if end is not None and end <= start:
        raise UsageError(f"-E {args.endtime} must be after -S {args.starttime or 'today'}")
    fields = parse_fields(args.format) if args.format else DEFAULT
    users = [u.strip() for v in args.user or () for u in v.split(",") if u.strip()]
    states = parse_states(args.state) or []
    with connect(args) as client:
        rows = client.acct(start, end, users, args.project, states)
    if args.json:
        emit_json(rows)
        return 0
    cells = [[FIELDS[f][1](r) for f in fields] for r in rows]
    heads = [FIELDS[f][0] for f in fields]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(heads)
        writer.writerows(cells)
        return 0
    widths = [max([len(heads[c]), *(len(r[c]) for r in cells)]) for c in range(len(fields))]
    right = [FIELDS[f][2] for f in fields]

    def line(row: list[str]) -> str:
        return " ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)).rstrip()

    print(line(heads))
    print(" ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))
    return 0
