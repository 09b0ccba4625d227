"""``#SBATCH`` directives read the way sbatch reads them, turned into ``kfabric submit`` options; and ``--begin``
times as sbatch writes them.

* Directives are the ``#SBATCH`` lines before the script's first command (blank lines and other comments may sit
  between them); a ``#`` that starts a word ends the line's options (``#SBATCH -t 1:00:00  # one hour``).
* Every sbatch option is in :data:`TABLE`: *mapped* to a kfabric option (``-A`` → ``--project``, ``--gres=gpu:h100:4``
  → ``--gpus-per-node 4 --gpu-model h100``), or *ignored with a warning* saying why (``--exclusive``,
  ``--ntasks``...). An option that is in neither is reported too: nothing is dropped silently.
* ``#KFABRIC`` lines win over ``#SBATCH`` lines, and the command line over both (see ``submit_cmd``).

The answer is :class:`Directives`: kfabric option values in the form the command line gives them (strings, lists
for repeatable options), where each came from (``file:line``), and the warnings to print.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kfabric.cli.errors import UsageError

SBATCH = "#SBATCH"


@dataclass
class Directives:
    options: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


Setter = Callable[[Directives, str, str, str], None]


def _to(dest: str) -> Setter:
    def set_value(d: Directives, value: str, where: str, _opt: str) -> None:
        d.options[dest] = value
        d.origin[dest] = where

    return set_value


def _flag(dest: str, value: object = True) -> Setter:
    def set_flag(d: Directives, _value: str, where: str, _opt: str) -> None:
        d.options[dest] = value
        d.origin[dest] = where

    return set_flag


def _append(dest: str) -> Setter:
    def add(d: Directives, value: str, where: str, _opt: str) -> None:
        d.options.setdefault(dest, []).append(value)
        d.origin[dest] = where

    return add


def _warn(why: str) -> Setter:
    def note(d: Directives, value: str, where: str, opt: str) -> None:
        shown = f"{opt}={value}" if value else opt
        d.warnings.append(f"{where}: {shown} is not supported by kfabric and was ignored: {why}")

    return note


def _gpus(dest: str) -> Setter:
    """``--gpus=[type:]N`` / ``--gpus-per-node=[type:]N``: the count, and the type as an acceptable GPU model."""

    def set_gpus(d: Directives, value: str, where: str, opt: str) -> None:
        kind, _sep, count = value.rpartition(":")
        if kind:
            _append("gpu_model")(d, kind, where, opt)
        d.options[dest] = count
        d.origin[dest] = where

    return set_gpus


def _gres(d: Directives, value: str, where: str, opt: str) -> None:
    """``--gres=gpu[:type]:N`` (per node): GPUs per node and the model; other GRES are not supported."""
    for item in value.split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            _warn("kfabric knows only GPUs as generic resources (gpu[:TYPE]:N)")(d, item, where, opt)
            continue
        if len(parts) == 3:
            _append("gpu_model")(d, parts[1], where, opt)
        d.options["gpus_per_node"] = parts[-1]
        d.origin["gpus_per_node"] = where
        d.options.setdefault("nodes", "1")
        d.origin.setdefault("nodes", where)


def _export(d: Directives, value: str, where: str, opt: str) -> None:
    """``--export=ALL,NAME=VALUE``: the NAME=VALUE pairs become job variables; ``NONE`` and bare names warn (kfabric
    never passes the submitter's environment)."""
    for item in value.split(","):
        if "=" in item:
            _append("env")(d, item, where, opt)
        elif item.strip().upper() != "ALL":
            _warn("jobs get a clean environment; pass NAME=VALUE pairs")(d, item, where, opt)


def _kill_dep(d: Directives, value: str, where: str, opt: str) -> None:
    d.options["kill_on_invalid_dep"] = value
    d.origin["kill_on_invalid_dep"] = where


_ONE_TASK = "a job runs its script once per node; start your tasks with srun or mpirun inside it"
_NO_POOL_PIN = "kfabric chooses nodes itself; ask for a GPU model (--gpu-model) or a topology (--min-topology)"

#: sbatch option (long name, short letter, takes a value) → what kfabric does with it
TABLE: dict[str, tuple[str, bool, Setter]] = {
    "account": ("A", True, _to("project")),
    "time": ("t", True, _to("time")),
    "job-name": ("J", True, _to("name")),
    "gpus": ("G", True, _gpus("gpus")),
    "gpus-per-node": ("", True, _gpus("gpus_per_node")),
    "gres": ("", True, _gres),
    "nodes": ("N", True, _to("nodes")),
    "output": ("o", True, _to("output")),
    "error": ("e", True, _to("error")),
    "array": ("a", True, _to("array")),
    "dependency": ("d", True, _to("dependency")),
    "hold": ("H", False, _flag("hold")),
    "begin": ("b", True, _to("begin")),
    "mail-type": ("", True, _to("mail_type")),
    "mail-user": ("", True, _to("mail_user")),
    "partition": ("p", True, _to("partition")),
    "cpus-per-task": ("c", True, _to("cpus")),
    "mem": ("", True, _to("mem")),
    "kill-on-invalid-dep": ("", True, _kill_dep),
    "chdir": ("D", True, _to("chdir")),
    "export": ("", True, _export),
    "qos": ("q", True, _to("qos")),
    "requeue": ("", False, _warn("kfabric requeues preempted and lost jobs itself")),
    "no-requeue": ("", False, _warn("kfabric requeues preempted and lost jobs itself")),
    "comment": ("", True, _warn("kfabric keeps no free-text comment; use the job name")),
    "exclusive": ("", False, _warn("kfabric packs GPUs, not whole nodes; ask for whole nodes with --gpus-per-node")),
    "nice": ("", True, _warn("use --priority low (the priority classes order the queue)")),
    "priority": ("", True, _warn("a number; kfabric's --priority is a class (low, normal, high)")),
    "ntasks": ("n", True, _warn(_ONE_TASK)),
    "ntasks-per-node": ("", True, _warn(_ONE_TASK)),
    "mem-per-cpu": ("", True, _warn("give the memory per node with --mem")),
    "mem-per-gpu": ("", True, _warn("give the memory per node with --mem")),
    "constraint": ("C", True, _warn(_NO_POOL_PIN)),
    "nodelist": ("w", True, _warn(_NO_POOL_PIN)),
    "exclude": ("x", True, _warn(_NO_POOL_PIN)),
    "reservation": ("", True, _warn("kfabric reserves capacity through grants, not named reservations")),
    "licenses": ("L", True, _warn("kfabric tracks no licenses")),
    "signal": ("", True, _warn("kfabric sends SIGTERM, then SIGKILL after the preemption grace")),
    "open-mode": ("", True, _warn("output files are truncated at each attempt")),
    "time-min": ("", True, _warn("give the time limit with --time; backfill uses --runtime-estimate")),
    "deadline": ("", True, _warn("kfabric has no deadlines")),
    "wait": ("W", False, _warn("follow the job with kfabric job log ID -f")),
    "parsable": ("", False, _warn("give --parsable on the command line")),
    "cpus-per-gpu": ("", True, _warn("give the CPUs per node with --cpus")),
    "threads-per-core": ("", True, _warn("kfabric does not place by threads")),
    "distribution": ("m", True, _warn(_ONE_TASK)),
    "cluster": ("M", True, _warn(_NO_POOL_PIN)),
    "clusters": ("", True, _warn(_NO_POOL_PIN)),
    "uid": ("", True, _warn("jobs run as the submitter's mapped account")),
    "gid": ("", True, _warn("jobs run as the submitter's mapped account")),
    "propagate": ("", True, _warn("kfabric does not propagate resource limits")),
    "input": ("i", True, _warn("jobs read no standard input")),
}
_SHORT = {short: long for long, (short, _v, _s) in TABLE.items() if short}


def strip_comment(text: str) -> str:
    """``text`` up to a ``#`` that starts a word outside quotes (a trailing comment)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def apply_line(d: Directives, text: str, where: str) -> None:
    """Read the options of one ``#SBATCH`` line (without the ``#SBATCH`` word) into ``d``."""
    try:
        words = shlex.split(strip_comment(text))
    except ValueError as exc:
        raise UsageError(f"{where}: {SBATCH}{text}: {exc}") from None
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        value: str | None = None
        if word.startswith("--"):
            name, eq, rest = word[2:].partition("=")
            value = rest if eq else None
        elif word.startswith("-") and len(word) >= 2:
            name = _SHORT.get(word[1], "")
            if not name:
                d.warnings.append(f"{where}: option {word} is unknown to kfabric and was ignored")
                continue
            value = word[2:] or None
        else:
            d.warnings.append(f"{where}: {word!r} is not an option and was ignored")
            continue
        entry = TABLE.get(name)
        if entry is None:
            if value is None and i < len(words) and not words[i].startswith("-"):
                value, i = words[i], i + 1
            shown = f"--{name}={value}" if value is not None else f"--{name}"
            d.warnings.append(f"{where}: {shown} is unknown to kfabric and was ignored")
            continue
        _short, takes_value, setter = entry
        if takes_value and value is None:
            if i >= len(words):
                raise UsageError(f"{where}: --{name} needs a value, e.g. #SBATCH --{name}=VALUE")
            value, i = words[i], i + 1
        setter(d, value or "", where, f"--{name}")


def read_sbatch(text: str, source: str) -> Directives:
    """The ``#SBATCH`` directives of a script's ``text`` (until its first command); ``source`` names it in
    messages."""
    d = Directives()
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break  # the first command ends the directives, as in sbatch
        if stripped.startswith(SBATCH) and (len(stripped) == len(SBATCH) or stripped[len(SBATCH)].isspace()):
            apply_line(d, stripped[len(SBATCH) :], f"{source}:{lineno}")
    return d


# ---- --begin -------------------------------------------------------------------------------------------------
BEGIN_FORMATS = (
    "now+N[seconds|minutes|hours|days|weeks] (e.g. now+1hour), HH:MM[:SS] (the next such time), "
    "YYYY-MM-DD[THH:MM[:SS]], today, tomorrow, midnight, noon, teatime"
)
_RELATIVE = re.compile(r"now(?:\+(\d+)\s*([a-z]*))?", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
          "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}  # fmt: skip
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_NAMED = {"midnight": (0, 0), "noon": (12, 0), "teatime": (16, 0)}


def parse_begin(text: str, now: datetime, flag: str = "--begin") -> float:
    """Epoch seconds of an sbatch ``--begin`` value, in ``now``'s time zone (sbatch reads the local time); a
    :class:`UsageError` naming ``flag`` otherwise."""
    value = text.strip().lower()
    rel = _RELATIVE.fullmatch(value)
    if rel is not None:
        amount, unit = int(rel.group(1) or 0), rel.group(2) or ""
        if unit not in _UNITS:
            raise UsageError(f"{flag}: unknown unit {unit!r} in {text!r}; accepted: {BEGIN_FORMATS}")
        return (now + timedelta(seconds=amount * _UNITS[unit])).timestamp()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value in ("today", "tomorrow"):
        return (day + timedelta(days=1 if value == "tomorrow" else 0)).timestamp()
    clock = _CLOCK.fullmatch(value)
    if clock is not None or value in _NAMED:
        hour, minute = _NAMED[value] if clock is None else (int(clock.group(1)), int(clock.group(2)))
        second = int(clock.group(3) or 0) if clock is not None else 0
        if hour > 23 or minute > 59 or second > 59:
            raise UsageError(f"{flag}: {text!r} is not a time of day; accepted: {BEGIN_FORMATS}")
        at = day.replace(hour=hour, minute=minute, second=second)
        return (at if at > now else at + timedelta(days=1)).timestamp()
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a time; accepted: {BEGIN_FORMATS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=now.tzinfo)
    return parsed.timestamp()
