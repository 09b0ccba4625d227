"""What scheduling cycles remember between them for speed only: the owner of a snapshot (the simulator, the
service) keeps one :class:`CycleMemo` and passes it to every ``cycle()``; the decisions are the same with a
fresh one (each entry is checked against what it depends on before use, or depends on nothing that changes
under one capacity index), only slower.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kfabric.sched.capacity import Capacity
from kfabric.sched.workload import Workload

#: entries a memo table holds before it is emptied (they are cheap to find again)
ELIGIBILITY_LIMIT = 100_000
MISS_LIMIT = 10_000
TERMS_LIMIT = 100_000

#: a node's kfabric terms on the score grid: its remaining share, and per GPU slot that holds the ask
#: (slot, score, milli left on the slot); see ``sched.bounded``
Terms = tuple[float, tuple[tuple[int, float, float], ...]]


class PlacementMemo:
    """What placements remember under one capacity index: every node of a list of pools (``spans``), the
    heterogeneity tiers of a list of pools (``tiers``; placement without per-job speeds), and the kfabric
    terms of a node (``terms``, keyed by the workload's id, the ask and the node's pool and free resources; the
    workloads named are kept alive in ``workloads`` so that an id is never reused while its entries stand)."""

    def __init__(self) -> None:
        self.spans: dict[tuple[int, ...], npt.NDArray[np.int64]] = {}
        self.tiers: dict[tuple[int, ...], list[list[int]]] = {}
        self.terms: dict[tuple[int, ...], Terms] = {}
        self.workloads: dict[int, Workload] = {}
        self._capacity: Capacity | None = None

    def bind(self, cap: Capacity) -> None:
        """Use the memo with ``cap`` (emptied if it was used with another capacity index)."""
        if self._capacity is not cap:
            self.clear()
            self._capacity = cap

    def clear(self) -> None:
        self.spans.clear()
        self.tiers.clear()
        self.terms.clear()
        self.workloads.clear()

    def remember(self, workload: Workload) -> int:
        """The key part naming ``workload`` in :attr:`terms` (emptied first when it holds too many entries)."""
        if len(self.terms) > TERMS_LIMIT:
            self.terms.clear()
            self.workloads.clear()
        key = id(workload)
        self.workloads.setdefault(key, workload)
        return key


class CycleMemo:
    """Per class of jobs, the pools it may ever use (``eligibility``, keyed by the class and the online
    pools); per failed gang victim search, what made it fail (``victim_misses``: (pool, rules, span) -> (the
    pool's ``Capacity.released`` count then, the most freeable nodes in one domain, the time a node could
    first become freeable by age); see ``sched.preemption``); what placements remember (``placement``). Tied to
    one capacity index: used with another, it starts empty."""

    def __init__(self) -> None:
        self.eligibility: dict[tuple[object, ...], object] = {}
        self.victim_misses: dict[tuple[object, ...], tuple[int, int, float]] = {}
        self.placement = PlacementMemo()
        self._capacity: Capacity | None = None

    def bind(self, cap: Capacity) -> None:
        """Use the memo with ``cap`` (emptied if it was used with another capacity index)."""
        if self._capacity is not cap:
            self.clear()
            self._capacity = cap
        self.placement.bind(cap)

    def clear(self) -> None:
        """Forget everything (the owner changed what entries depend on: the policy, the tenants, the fleet)."""
        self.eligibility.clear()
        self.victim_misses.clear()
        self.placement.clear()
