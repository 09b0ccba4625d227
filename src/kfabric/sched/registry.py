"""Every policy part registered by name, in one place: the only module that turns a name a policy file holds
into what the core runs. No ``if name == ...`` and no ``is`` on a function anywhere else.

A policy names four parts (``Policy.ordering``, ``placement``, ``backfill`` and its preemption switches); each
name maps to a *mode*: an object carrying the implementation and what the core must know about it (does the
placement measure fragmentation against the queue's task types? does a blocked job hold its pools?).
:func:`resolve` checks the names (an unknown one is a :class:`ValidationError` naming the field, the closest
name and every choice) and returns the policy's :class:`Modes`; a policy's modes are resolved once per
distinct set of names (:func:`modes`), so the core pays one dictionary look-up per cycle for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from kfabric.model.errors import ValidationError
from kfabric.model.suggest import did_you_mean
from kfabric.sched import ordering, placement
from kfabric.sched.ordering import OrderingFn
from kfabric.sched.request import PlacementFn
from kfabric.sched.single import Scorer


@dataclass(frozen=True, slots=True)
class OrderingMode:
    """An ordering policy: ``keys`` maps the queue to sort keys (lower first)."""

    name: str
    keys: OrderingFn


@dataclass(frozen=True, slots=True)
class PlacementMode:
    """A placement policy: ``place`` puts one job; ``scorer`` is its single-node score (None: first fit);
    ``queue_workload``: it measures fragmentation against the task types of the queue, which the cycle gathers
    for it (the others measure against the request's workload or the job's own shape)."""

    name: str
    place: PlacementFn
    scorer: Scorer | None = None
    queue_workload: bool = False


@dataclass(frozen=True, slots=True)
class BackfillMode:
    """A backfill policy. ``blocks_pools``: a job that cannot start keeps the jobs behind it off its pools (no
    backfill). ``reserves``: blocked jobs get reservations; ``reserves_every_tested``: every tested job may get
    one (conservative), else at most the policy's ``reservations`` (EASY)."""

    name: str
    blocks_pools: bool
    reserves: bool
    reserves_every_tested: bool = False

    def reservation_limit(self, reservations: int, bf_max_job_test: int) -> int:
        """How many reservations one cycle may make under this mode."""
        if not self.reserves:
            return 0
        return bf_max_job_test if self.reserves_every_tested else reservations


@dataclass(frozen=True, slots=True)
class PreemptionMode:
    """One way a pending job may take GPUs from running work, switched on by the policy field ``flag``."""

    name: str
    flag: str
    victims: str


@dataclass(frozen=True, slots=True)
class Preemption:
    """Which preemption modes a policy switches on."""

    by_priority: bool
    by_service: bool
    reclaim: bool

    @property
    def preempts(self) -> bool:
        """Does the policy preempt at all?"""
        return self.by_priority or self.by_service or self.reclaim

    @property
    def ranked(self) -> bool:
        """Does a job preempt by rank (priority class or attained-service queue), not only to reclaim?"""
        return self.by_priority or self.by_service


@dataclass(frozen=True, slots=True)
class Modes:
    """What a policy's names resolve to."""

    ordering: OrderingMode
    placement: PlacementMode
    backfill: BackfillMode
    preemption: Preemption


ORDERING_MODES: dict[str, OrderingMode] = {
    m.name: m
    for m in (
        OrderingMode("fifo", ordering.fifo),
        OrderingMode("sjf", ordering.sjf),
        OrderingMode("qssf", ordering.qssf),
        OrderingMode("las", ordering.las),
        OrderingMode("multifactor", ordering.multifactor),
        OrderingMode("kfabric", ordering.kfabric_order),
    )
}

PLACEMENT_MODES: dict[str, PlacementMode] = {
    m.name: m
    for m in (
        PlacementMode("first-fit", placement.first_fit),
        PlacementMode("best-fit", placement.best_fit, placement.BEST_FIT),
        PlacementMode("fgd", placement.fgd, placement.FGD, queue_workload=True),
        PlacementMode("kfabric", placement.kfabric_place, placement.KFABRIC),
    )
}

#: in the order operators read them (the error for an unknown name lists them so)
BACKFILL_MODES: dict[str, BackfillMode] = {
    m.name: m
    for m in (
        BackfillMode("none", blocks_pools=True, reserves=False),
        BackfillMode("easy", blocks_pools=False, reserves=True),
        BackfillMode("conservative", blocks_pools=False, reserves=True, reserves_every_tested=True),
    )
}

PREEMPTION_MODES: dict[str, PreemptionMode] = {
    m.name: m
    for m in (
        PreemptionMode("priority", "preempt_by_priority", "running work of a lower priority class"),
        PreemptionMode(
            "service", "preempt_by_service", "running work of its class or below in a higher attained-service queue"
        ),
        PreemptionMode("reclaim", "reclaim", "work borrowing the capacity its project is guaranteed"),
    )
}

#: name -> implementation, for callers that only run one part (benchmarks, tests)
ORDERINGS: dict[str, OrderingFn] = {name: m.keys for name, m in ORDERING_MODES.items()}
PLACEMENTS: dict[str, PlacementFn] = {name: m.place for name, m in PLACEMENT_MODES.items()}

M = TypeVar("M")


def lookup(kind: str, name: str, table: Mapping[str, M], where: str, listed: list[str]) -> M:
    """``table[name]``, or a :class:`ValidationError` at ``where`` naming the closest name and the choices."""
    found = table.get(name)
    if found is None:
        raise ValidationError(
            where, f"unknown {kind} {name!r}", f"use one of: {', '.join(listed)}{did_you_mean(name, listed)}"
        )
    return found


def resolve(
    ordering_name: str,
    placement_name: str,
    backfill_name: str,
    preemption: Preemption,
    where: str = "policy",
) -> Modes:
    """The modes these names register (errors name ``where``'s field)."""
    return Modes(
        lookup("ordering", ordering_name, ORDERING_MODES, f"{where}.ordering", sorted(ORDERING_MODES)),
        lookup("placement", placement_name, PLACEMENT_MODES, f"{where}.placement", sorted(PLACEMENT_MODES)),
        lookup("backfill", backfill_name, BACKFILL_MODES, f"{where}.backfill", list(BACKFILL_MODES)),
        preemption,
    )


_RESOLVED: dict[tuple[str, str, str, bool, bool, bool], Modes] = {}


def modes(
    ordering_name: str, placement_name: str, backfill_name: str, by_priority: bool, by_service: bool, reclaim: bool
) -> Modes:
    """:func:`resolve`, once per distinct set of names and switches (a handful in a process)."""
    key = (ordering_name, placement_name, backfill_name, by_priority, by_service, reclaim)
    found = _RESOLVED.get(key)
    if found is None:
        preemption = Preemption(by_priority, by_service, reclaim)
        found = _RESOLVED[key] = resolve(ordering_name, placement_name, backfill_name, preemption)
    return found
