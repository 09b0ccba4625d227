"""Job arrays, as ``sbatch --array`` writes them: ``0-99%10,200`` (ranges, ``1-9:2`` steps, lists, a ``%N`` cap on
how many tasks run at once), and job references ``12`` (a job, or a whole array) and ``12_3`` (one task).

Every task of an array is a job row of its own; ``array_job_id`` is the id of the array's first task (Slurm's
``%A``), ``array_task_id`` the index (``%a``). The cap is kept with the expression in each task's spec
(``spec["array"]``) and enforced by :mod:`kfabric.service.eligibility_gate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kfabric.model.errors import ValidationError

#: most tasks in one array (a 10,000-task array must fit in one request)
MAX_ARRAY_TASKS = 20_000
#: highest task index (Slurm's MaxArraySize - 1 can be set up to 4,000,000)
MAX_ARRAY_INDEX = 4_000_000
#: longest ``--array`` expression
MAX_ARRAY_TEXT = 4_000
_EXAMPLE = "e.g. --array 0-99, 1-9:2, 3,5,7 or 0-999%50"
_PART = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
_REF = re.compile(r"(\d+)(?:_(\d+))?")


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """The indices of an array (ascending, distinct) and its cap on running tasks (None: no cap)."""

    indices: tuple[int, ...]
    max_running: int | None


def parse_array(text: str, where: str = "array") -> ArraySpec:
    """The tasks of ``text``; :class:`ValidationError` naming ``where`` and the bad part. The task count is checked
    from the ranges' sizes before any index list is built, so an oversize array costs nothing to refuse."""
    value = text.strip()
    if len(value) > MAX_ARRAY_TEXT:
        raise ValidationError(where, f"is {len(value)} characters long, at most {MAX_ARRAY_TEXT}", _EXAMPLE)
    if not value:
        raise ValidationError(where, "is empty", _EXAMPLE)
    body, cap_sep, cap_text = value.partition("%")
    cap: int | None = None
    if cap_sep:
        if not cap_text.isdigit() or int(cap_text) < 1:
            raise ValidationError(where, f"'%{cap_text}' is not a cap: give a whole number >= 1 after %", _EXAMPLE)
        cap = int(cap_text)
    ranges: list[tuple[int, int, int]] = []
    total = 0
    for part in body.split(","):
        match = _PART.fullmatch(part.strip())
        if match is None:
            raise ValidationError(where, f"{part!r} is not an index, a range A-B or a stepped range A-B:S", _EXAMPLE)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first:
            raise ValidationError(where, f"range {part!r} ends before it starts", "write it low-high, e.g. 0-99")
        if step < 1:
            raise ValidationError(where, f"range {part!r} has step {step}", "the step after ':' must be >= 1")
        if last > MAX_ARRAY_INDEX:
            raise ValidationError(where, f"index {last} is above the highest, {MAX_ARRAY_INDEX}", _EXAMPLE)
        total += (last - first) // step + 1
        if total > MAX_ARRAY_TASKS:
            raise ValidationError(
                where, f"has more than {MAX_ARRAY_TASKS} tasks", "split the work into several arrays, or fewer tasks"
            )
        ranges.append((first, last, step))
    indices = sorted({i for first, last, step in ranges for i in range(first, last + 1, step)})
    return ArraySpec(tuple(indices), cap)


def max_running(text: str) -> int | None:
    """The ``%N`` cap of a stored (already validated) array expression."""
    _body, sep, cap = text.partition("%")
    return int(cap) if sep and cap.isdigit() else None


@dataclass(frozen=True, slots=True)
class JobRef:
    """``12`` (``task`` None: the job, or every task when 12 is an array) or ``12_3`` (task 3 of array 12)."""

    job_id: int
    task: int | None = None

    def __str__(self) -> str:
        return str(self.job_id) if self.task is None else f"{self.job_id}_{self.task}"


def parse_ref(text: str, where: str = "JOBID") -> JobRef:
    """A job reference; :class:`ValidationError` naming ``where``."""
    match = _REF.fullmatch(text.strip())
    if match is None or int(match.group(1)) < 1 or int(match.group(1)) > 2**62:
        raise ValidationError(
            where, f"{text!r} is not a job id", "give a job id such as 42, or an array task such as 42_3"
        )
    task = int(match.group(2)) if match.group(2) is not None else None
    if task is not None and task > MAX_ARRAY_INDEX:
        raise ValidationError(where, f"task index {task} is above the highest, {MAX_ARRAY_INDEX}")
    return JobRef(int(match.group(1)), task)
