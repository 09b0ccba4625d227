"""What a scheduling cycle decides: admissions with exact placements, preemptions, reservations, reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from kfabric.model.reasons import PendingReason


class NodeShare(NamedTuple):
    """The GPUs a job gets on one node: node index in the fleet, GPU indices on the node, milli per GPU (a
    named tuple: a gang makes one per node, and a tuple is made three times faster than a frozen dataclass)."""

    node: int
    gpus: tuple[int, ...]
    gpu_milli: int
    cpu_milli: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Placement:
    pool: str
    shares: tuple[NodeShare, ...]

    @property
    def gpu_milli_total(self) -> int:
        return sum(len(s.gpus) * s.gpu_milli for s in self.shares)

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(s.node for s in self.shares)


@dataclass(frozen=True, slots=True)
class Admission:
    """Start ``job_id`` on ``placement``. ``start_at_s`` > now when it waits for preempted victims to exit.

    ``borrowed`` work runs on capacity its project is not entitled to (idle reservations, lendable pools)
    and is the first to be reclaimed. ``guaranteed`` work runs on its project's reserved GPUs; the owner
    passes both flags to ``Snapshot.start`` so the quota counters see it. ``rule`` is the sovereignty
    sentence an auditor reads.
    """

    job_id: str
    placement: Placement
    start_at_s: float
    borrowed: bool
    rule: str
    backfilled: bool = False
    guaranteed: bool = False


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: str
    by_job: str
    reason: str
    grace_s: float


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: str
    pool: str
    start_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    admissions: tuple[Admission, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    pending: Mapping[str, PendingReason] = field(default_factory=dict)
