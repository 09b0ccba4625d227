"""Job dependencies, as ``sbatch --dependency`` writes them: ``afterok:12:13,afterany:14_2`` (every term must be
met), ``afterok:12?afternotok:12`` (any one term), and ``singleton`` (no other job of the same name and user runs
or waits ahead of it).

=============  ===========================================  ==========================================
kind           met when every referenced job (or task) ...  never met when ...
=============  ===========================================  ==========================================
``after``      started (or ended, or was cancelled)         (always met eventually)
``afterany``   ended, in any state                          (always met eventually)
``afterok``    succeeded                                    one ended in another state
``afternotok`` ended, and one did not succeed               all ended and all succeeded
=============  ===========================================  ==========================================

An id that names an array (the id of its first task) stands for every task of the array; ``12_3`` for one task.
Parsing is pure; :mod:`kfabric.service.eligibility_gate` looks up the states and decides each cycle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from kfabric.model.errors import ValidationError
from kfabric.model.suggest import did_you_mean
from kfabric.service.job_arrays import JobRef, parse_ref

KINDS = ("after", "afterany", "afterok", "afternotok", "singleton")
MAX_DEPENDENCY_TEXT = 4_000
#: most job references in one dependency
MAX_REFS = 1_000
_EXAMPLE = "e.g. --dependency afterok:12:13, afterany:12_3, afterok:12?afternotok:13 or singleton"
_FINAL = frozenset(("succeeded", "failed", "cancelled", "timeout"))
_STARTED = _FINAL | {"running", "preempted"}


class Status(Enum):
    MET = "met"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Term:
    kind: str
    refs: tuple[JobRef, ...] = ()

    def __str__(self) -> str:
        return ":".join([self.kind, *(str(r) for r in self.refs)])


@dataclass(frozen=True, slots=True)
class Dependency:
    terms: tuple[Term, ...]
    #: True for ``?`` (any one term suffices), False for ``,`` (all terms)
    any_of: bool = False

    def __str__(self) -> str:
        return ("?" if self.any_of else ",").join(str(t) for t in self.terms)

    @property
    def refs(self) -> tuple[JobRef, ...]:
        return tuple(r for t in self.terms for r in t.refs)


def parse_dependency(text: str, where: str = "dependency") -> Dependency | None:
    """The dependency of ``text`` (None for ""); :class:`ValidationError` naming ``where`` and the bad part."""
    value = text.strip()
    if not value:
        return None
    if len(value) > MAX_DEPENDENCY_TEXT:
        raise ValidationError(where, f"is {len(value)} characters long, at most {MAX_DEPENDENCY_TEXT}", _EXAMPLE)
    if "," in value and "?" in value:
        raise ValidationError(where, "mixes ',' (all of) and '?' (any of)", "use one separator throughout, as Slurm")
    any_of = "?" in value
    terms: list[Term] = []
    count = 0
    for part in re.split(r"[,?]", value):
        kind, _sep, rest = part.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            hint = did_you_mean(kind, KINDS)
            raise ValidationError(
                where,
                f"unknown dependency type {kind!r}{hint}",
                f"kfabric supports {', '.join(KINDS)}; {_EXAMPLE}",
            )
        if kind == "singleton":
            if rest:
                raise ValidationError(where, f"{part!r}: singleton takes no job ids", _EXAMPLE)
            terms.append(Term(kind))
            continue
        ids = [x for x in rest.split(":")] if rest else []
        if not ids or any(not x.strip() for x in ids):
            raise ValidationError(where, f"{part!r} names no job id after {kind}:", _EXAMPLE)
        refs: list[JobRef] = []
        for x in ids:
            # Slurm's after:ID+MINUTES delays are not supported: say so rather than misread the id
            if "+" in x:
                raise ValidationError(where, f"{x!r}: the +MINUTES delay is not supported", "drop the +MINUTES part")
            refs.append(parse_ref(x, where))
        count += len(refs)
        if count > MAX_REFS:
            raise ValidationError(where, f"names more than {MAX_REFS} jobs", "depend on an array id instead")
        terms.append(Term(kind, tuple(refs)))
    return Dependency(tuple(terms), any_of)


def term_status(kind: str, states: Sequence[str] | None) -> Status:
    """The status of one reference under ``kind``: ``states`` are the states of the job, or of every task of the
    array it names; None when the job no longer exists (never met)."""
    if states is None or not states:
        return Status.NEVER
    if kind == "after":
        return Status.MET if all(s in _STARTED for s in states) else Status.WAIT
    if kind == "afterany":
        return Status.MET if all(s in _FINAL for s in states) else Status.WAIT
    if kind == "afterok":
        if any(s in _FINAL and s != "succeeded" for s in states):
            return Status.NEVER
        return Status.MET if all(s == "succeeded" for s in states) else Status.WAIT
    if kind == "afternotok":
        if not all(s in _FINAL for s in states):
            return Status.WAIT
        return Status.MET if any(s != "succeeded" for s in states) else Status.NEVER
    raise ValueError(f"no per-job status for dependency kind {kind!r}")


def combine(statuses: Sequence[Status], any_of: bool) -> Status:
    """All terms (``,``) or any one term (``?``)."""
    if any_of:
        if Status.MET in statuses:
            return Status.MET
        return Status.NEVER if all(s is Status.NEVER for s in statuses) else Status.WAIT
    if Status.NEVER in statuses:
        return Status.NEVER
    return Status.MET if all(s is Status.MET for s in statuses) else Status.WAIT
