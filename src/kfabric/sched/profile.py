"""Availability profiles for backfill: per pool, a step function of free GPU milli over future time.

Built from running work's expected ends (time limits are the bound). A reservation subtracts the job's need
over ``[start, start + time limit)``; a job may start now only if the profile holds it over its whole time
limit, so a started backfill job never delays a reservation (at the pool's aggregate level).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable


class Profile:
    """Free milli of one pool: ``free[i]`` holds from ``times[i]`` until ``times[i + 1]``."""

    __slots__ = ("free", "reserved", "times")

    def __init__(self, now_s: float, free_now: float, releases: Iterable[tuple[float, float]]) -> None:
        deltas: dict[float, float] = defaultdict(float)
        for t, milli in releases:
            deltas[max(t, now_s)] += milli
        self.times = [now_s]
        self.free = [free_now + deltas.pop(now_s, 0.0)]
        for t in sorted(deltas):
            self.times.append(t)
            self.free.append(self.free[-1] + deltas[t])
        self.reserved = False

    def _split(self, t: float) -> int:
        """Index of the step starting exactly at ``t`` (inserting a breakpoint if needed)."""
        i = bisect.bisect_right(self.times, t) - 1
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.free.insert(i + 1, self.free[i])
        return i + 1

    def min_free(self, start_s: float, end_s: float) -> float:
        i = max(bisect.bisect_right(self.times, start_s) - 1, 0)
        j = bisect.bisect_left(self.times, end_s)
        return min(self.free[i : max(j, i + 1)])

    def fits(self, start_s: float, duration_s: float, milli: float) -> bool:
        return self.min_free(start_s, start_s + duration_s) >= milli

    def earliest(self, after_s: float, duration_s: float, milli: float, strictly_after: bool) -> float | None:
        """Earliest step start >= ``after_s`` (or > when ``strictly_after``) where ``milli`` fits for the
        whole duration; None if never (the job needs more than the pool will ever have free)."""
        start = bisect.bisect_right(self.times, after_s) if strictly_after else 0
        for i in range(start, len(self.times)):
            t = max(self.times[i], after_s)
            if self.free[i] >= milli and self.fits(t, duration_s, milli):
                return t
        return None

    def take(self, start_s: float, duration_s: float, milli: float) -> None:
        i = self._split(start_s)
        j = self._split(start_s + duration_s)
        for k in range(i, j):
            self.free[k] -= milli
