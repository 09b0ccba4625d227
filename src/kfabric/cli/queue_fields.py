"""``kfabric queue``'s columns: squeue-like field names (and squeue's ``%i %j %u ...`` letters), sort keys, the
folding of pending array tasks into one line (``12_[5-99%10]``) and plain column output.

Every field reads a job as the API lists it (``JobPublic`` as a dict); a field the server does not send yet
(array ids on an older server) reads as absent, never as an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kfabric.cli.errors import UsageError
from kfabric.model.suggest import did_you_mean

Job = dict[str, Any]
FINAL_STATES = ("succeeded", "failed", "cancelled", "timeout")
_COMPACT = {
    "pending": "PD",
    "admitted": "CF",
    "running": "R",
    "preempted": "PR",
    "succeeded": "CD",
    "failed": "F",
    "cancelled": "CA",
    "timeout": "TO",
}


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


def run_time(job: Job, now_s: float) -> float:
    """TIME as squeue shows it: how long the job has run (0 until it runs; its whole run once ended)."""
    started = job.get("started_at_s")
    if started is None or job["state"] in ("pending", "admitted"):
        return 0.0
    ended = job.get("ended_at_s")
    return max(float(ended if ended is not None else now_s) - float(started), 0.0)


def ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2,5``."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and runs[-1][1] + 1 == v:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def fmt_nodes(job: Job) -> str:
    """Where a placed job runs: ``node:GPUS`` per node (``@250m`` for a fractional share)."""
    out = []
    for n in job.get("nodes") or []:
        share = "" if n["gpu_milli"] >= 1000 else f"@{n['gpu_milli']}m"
        out.append(f"{n['node']}:{ranges(n['gpus'])}{share}" if n["gpus"] else str(n["node"]))
    return " ".join(out)


def fmt_gpus(job: Job) -> str:
    return f"{job['gpu_milli'] / 1000:g}" if job["gpu_milli"] < 1000 else str(job["gpus"])


def job_id_text(job: Job) -> str:
    """``42``, or ``12_3`` for task 3 of array 12 (the folded line of an array's pending tasks carries its own)."""
    folded = job.get("_folded_id")
    if folded is not None:
        return str(folded)
    array, task = job.get("array_job_id"), job.get("array_task_id")
    return f"{array}_{task}" if array is not None and task is not None else str(job["id"])


def why(job: Job) -> str:
    """REASON: why a pending job waits (code and sentence), how an ended one ended; "" for placed jobs."""
    state = job["state"]
    if state in ("admitted", "running"):
        return "cancelling" if job.get("cancel_requested") else ""
    if state in FINAL_STATES:
        code = job.get("exit_code")
        return str(job["reason"]) + (f" (exit {code})" if code is not None else "")
    return f"{job['reason_code']}: {job['reason']}" if job.get("reason_code") else str(job["reason"])


def where_or_why(job: Job) -> str:
    """NODELIST(REASON): the placement of a placed job, else why it waits (and when it may start), or how it
    ended."""
    state = job["state"]
    if state in ("admitted", "running"):
        text = fmt_nodes(job)
        return f"{text} (cancelling)" if job.get("cancel_requested") else text
    text = why(job)
    if state not in FINAL_STATES:
        if job.get("expected_start_s") is not None:
            text += f"; expected start {fmt_time(job['expected_start_s'])}"
        elif job.get("expected_start_why") and str(job["expected_start_why"]) not in text:
            text += f"; no expected start: {job['expected_start_why']}"  # unless it only repeats why it waits
    return text


def start_text(job: Job) -> str:
    """START: when it started, or (pending) when it is expected to; ``-`` when no start can be bounded."""
    if job.get("started_at_s") is not None and job["state"] != "pending":
        return fmt_time(job["started_at_s"])
    return fmt_time(job.get("expected_start_s"))


def start_key(job: Job) -> float:
    value = job.get("started_at_s") if job["state"] != "pending" else None
    if value is None:
        value = job.get("expected_start_s")
    return float("inf") if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Field:
    header: str
    text: Callable[[Job, float], str]
    key: Callable[[Job, float], Any]
    right: bool = False


def _s(name: str) -> Callable[[Job, float], str]:
    return lambda j, _now: "" if (v := j.get(name)) is None else str(v)


def _k(name: str) -> Callable[[Job, float], Any]:
    return lambda j, _now: "" if (v := j.get(name)) is None else v


def _num(name: str) -> Callable[[Job, float], float]:
    return lambda j, _now: float("inf") if j.get(name) is None else float(j[name])


FIELDS: dict[str, Field] = {
    "id": Field("JOBID", lambda j, _n: job_id_text(j), lambda j, _n: (j.get("array_job_id") or j["id"], j["id"]), True),
    "arrayid": Field("ARRAY_JOB_ID", lambda j, _n: str(j.get("array_job_id") or j["id"]), _num("array_job_id"), True),
    "taskid": Field(
        "TASK", lambda j, _n: str(j.get("_folded_tasks") or j.get("array_task_id") or ""), _num("array_task_id"), True
    ),
    "name": Field("NAME", _s("name"), _k("name")),
    "user": Field("USER", _s("user"), _k("user")),
    "project": Field("ACCOUNT", _s("project"), _k("project")),
    "state": Field("STATE", lambda j, _n: j["state"].upper(), _k("state")),
    "st": Field("ST", lambda j, _n: _COMPACT.get(j["state"], j["state"][:2].upper()), _k("state")),
    "reason": Field("NODELIST(REASON)", lambda j, _n: where_or_why(j), lambda j, _n: where_or_why(j)),
    "why": Field("REASON", lambda j, _n: why(j), lambda j, _n: why(j)),
    "nodelist": Field("NODELIST", lambda j, _n: fmt_nodes(j), lambda j, _n: fmt_nodes(j)),
    "time": Field("TIME", lambda j, n: fmt_duration(run_time(j, n)), lambda j, n: run_time(j, n), True),
    "limit": Field("TIME_LIMIT", lambda j, _n: fmt_duration(j.get("time_limit_s")), _num("time_limit_s"), True),
    "gpus": Field("GPUS", lambda j, _n: fmt_gpus(j), lambda j, _n: j["gpu_milli"] * max(j["gpus"], 1) / 1000, True),
    "nodes": Field(
        "NODES", lambda j, _n: str(len(j.get("nodes") or []) or "-"), lambda j, _n: len(j.get("nodes") or []), True
    ),
    "pool": Field("PARTITION", lambda j, _n: str(j.get("pool") or "-"), lambda j, _n: j.get("pool") or ""),
    "priority": Field("PRIORITY", _s("priority"), _k("priority")),
    "start": Field("START_TIME", lambda j, _n: start_text(j), lambda j, _n: start_key(j)),
    "submit": Field("SUBMIT_TIME", lambda j, _n: fmt_time(j["submitted_at_s"]), _num("submitted_at_s")),
    "end": Field("END_TIME", lambda j, _n: fmt_time(j.get("ended_at_s")), _num("ended_at_s")),
    "exitcode": Field(
        "EXIT", lambda j, _n: "" if j.get("exit_code") is None else str(j["exit_code"]), _num("exit_code"), True
    ),
}
#: squeue's ``%`` letters (``squeue -o "%i %j %u %T %M %D %R"``) for the fields kfabric has
LETTERS = {
    "i": "id", "A": "arrayid", "F": "arrayid", "K": "taskid", "j": "name", "u": "user", "a": "project",
    "T": "state", "t": "st", "r": "why", "R": "reason", "N": "nodelist", "M": "time", "l": "limit", "b": "gpus",
    "D": "nodes", "P": "partition", "Q": "priority", "S": "start", "V": "submit", "e": "end",
}  # fmt: skip
#: other names people type for a field (Slurm's long names, kfabric's column headers)
ALIASES = {
    "jobid": "id", "account": "project", "partition": "pool", "statecompact": "st", "timelimit": "limit",
    "starttime": "start", "submittime": "submit", "endtime": "end", "exit": "exitcode", "gres": "gpus",
    "tres": "gpus", "arrayjobid": "arrayid", "arraytaskid": "taskid", "numnodes": "nodes", "node": "nodelist",
    "reasonlist": "reason",
}  # fmt: skip
DEFAULT = ("id", "project", "name", "user", "state", "gpus", "time", "reason")
START_VIEW = ("id", "pool", "name", "user", "st", "start", "gpus", "reason")
_LETTER = re.compile(r"%[.\-]?\d*([A-Za-z])")


def field_name(raw: str, where: str) -> str:
    key = raw.strip().lower().replace("_", "").replace("-", "")
    name = ALIASES.get(key, key)
    if name not in FIELDS:
        known = sorted(FIELDS) + sorted(ALIASES)
        raise UsageError(
            f"{where}: unknown field {raw!r}{did_you_mean(raw, known)}; fields: {', '.join(sorted(FIELDS))} "
            "(or squeue's %i %j %u %T %M %D %R ... letters)"
        )
    return name


def parse_format(text: str) -> tuple[str, ...]:
    """``id,name,state`` (commas or spaces), or squeue letters ``"%i %.9P %j %T"`` (widths ignored)."""
    if "%" in text:
        letters = _LETTER.findall(text)
        if not letters or _LETTER.sub("", text).strip(" ,|"):
            raise UsageError(f"--format: cannot read {text!r}; write fields as id,name,state or %i %j %T")
        out = []
        for letter in letters:
            if letter not in LETTERS:
                raise UsageError(f"--format: squeue letter %{letter} is not one kfabric shows; letters: "
                                 f"{' '.join('%' + k for k in LETTERS)}")  # fmt: skip
            out.append(field_name(LETTERS[letter], "--format"))
        return tuple(out)
    names = [n for n in re.split(r"[,\s]+", text) if n]
    if not names:
        raise UsageError("--format: name at least one field, e.g. --format id,name,state,time")
    return tuple(field_name(n, "--format") for n in names)


def parse_sort(text: str) -> tuple[tuple[str, bool], ...]:
    """``-start,id``: field names, ``-`` for descending (``+`` or nothing ascending)."""
    out = []
    for raw in (n.strip() for n in text.split(",")):
        if not raw:
            continue
        descending = raw.startswith("-")
        out.append((field_name(raw.lstrip("+-"), "--sort"), descending))
    if not out:
        raise UsageError("--sort: name at least one field, e.g. --sort -start,id")
    return tuple(out)


def sort_jobs(jobs: list[Job], keys: Sequence[tuple[str, bool]], now_s: float) -> list[Job]:
    """Stable multi-key sort (the last key first), each ascending or descending."""
    out = list(jobs)
    for name, descending in reversed(keys):
        key = FIELDS[name].key
        out.sort(key=lambda j: _comparable(key(j, now_s)), reverse=descending)
    return out


def _comparable(value: Any) -> tuple[int, Any]:
    """Numbers before text, so a missing value ("") never compares with a number."""
    if isinstance(value, tuple):
        return (0, value)
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def fold_arrays(jobs: list[Job]) -> list[Job]:
    """One line for the pending tasks of each array (``12_[5-99%10]``, as squeue), at the place of its first
    task; running and ended tasks keep a line each. Jobs without array ids pass through."""
    groups: dict[int, list[Job]] = {}
    for j in jobs:
        array = j.get("array_job_id")
        if array is not None and j.get("array_task_id") is not None and j["state"] == "pending":
            groups.setdefault(int(array), []).append(j)
    if not any(len(g) > 1 for g in groups.values()):
        return jobs
    out: list[Job] = []
    for j in jobs:
        array = j.get("array_job_id")
        group = groups.get(int(array)) if array is not None and j["state"] == "pending" else None
        if group is None or j.get("array_task_id") is None or len(group) == 1:
            out.append(j)
        elif group[0] is j:
            tasks = ranges(int(g["array_task_id"]) for g in group)
            cap = _array_cap(j)
            label = f"[{tasks}{cap}]"
            out.append({**j, "_folded_id": f"{array}_{label}", "_folded_tasks": label})
    return out


def _array_cap(job: Job) -> str:
    """``%10`` when the array caps how many of its tasks run at once (its ``--array`` expression)."""
    expr = str((job.get("spec") or {}).get("array") or "")
    match = re.search(r"%(\d+)\s*$", expr)
    return f"%{match.group(1)}" if match else ""


def plain_lines(fields: Sequence[str], jobs: Sequence[Job], now_s: float, header: bool = True) -> Iterable[str]:
    """Plain columns, each as wide as its widest cell (the last one unpadded): no table widget, so 20,000 rows
    format in a fraction of a second. Built a column at a time (one pass per field over the jobs, then one
    padding pass per column), then joined a line at a time."""
    spec = [FIELDS[f] for f in fields]
    last = len(spec) - 1
    columns: list[list[str]] = []
    for c, f in enumerate(spec):
        text = f.text
        cells = [text(j, now_s) for j in jobs]
        if header:
            cells.insert(0, f.header)
        if c != last or f.right:
            width = max(map(len, cells), default=0)
            cells = [x.rjust(width) for x in cells] if f.right else [x.ljust(width) for x in cells]
        columns.append(cells)
    for line in zip(*columns, strict=True):
        yield " ".join(line).rstrip()
