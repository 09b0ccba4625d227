"""What scheduling cycles remember between them for speed only: the owner of a snapshot (the simulator, the
service) keeps one :class:`CycleMemo` and passes it to every ``cycle()``; the decisions are the same with a
fresh one (each entry is checked against what it depends on before use), only slower.
"""

from __future__ import annotations

from kfabric.sched.capacity import Capacity

#: entries a memo table holds before it is emptied (they are cheap to find again)
ELIGIBILITY_LIMIT = 100_000
MISS_LIMIT = 10_000


class CycleMemo:
    """Per class of jobs, the pools it may ever use (``eligibility``, keyed by the class and the online
    pools); per failed gang victim search, what made it fail (``victim_misses``: (pool, rules, span) -> (the
    pool's ``Capacity.released`` count then, the most freeable nodes in one domain, the time a node could
    first become freeable by age); see ``sched.preemption``). Tied to one capacity index: used with another,
    it starts empty."""

    def __init__(self) -> None:
        self.eligibility: dict[tuple[object, ...], object] = {}
        self.victim_misses: dict[tuple[object, ...], tuple[int, int, float]] = {}
        self._capacity: Capacity | None = None

    def bind(self, cap: Capacity) -> None:
        """Use the memo with ``cap`` (emptied if it was used with another capacity index)."""
        if self._capacity is not cap:
            self.clear()
            self._capacity = cap

    def clear(self) -> None:
        """Forget everything (the owner changed what entries depend on: the policy, the tenants, the fleet)."""
        self.eligibility.clear()
        self.victim_misses.clear()
