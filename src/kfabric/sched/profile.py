"""Availability profiles for backfill: per pool, a step function of free GPU milli over future time.

Built from running work's expected ends (time limits are the bound). A reservation subtracts the job's need
over ``[start, start + time limit)``; a job may start now only if the profile holds it over its whole time
limit, so a started backfill job never delays a reservation (at the pool's aggregate level).
Numpy arrays: building is a sort and a cumulative sum; queries are binary searches and slice minima.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


class Profile:
    """Free milli of one pool: ``free[i]`` holds from ``times[i]`` until ``times[i + 1]``."""

    __slots__ = ("free", "reserved", "times")

    def __init__(self, now_s: float, free_now: float, ends_s: Floats, milli: Floats) -> None:
        ends = np.maximum(np.asarray(ends_s, dtype=np.float64), now_s)
        order = np.argsort(ends, kind="stable")
        ends, rel = ends[order], np.asarray(milli, dtype=np.float64)[order]
        times, first = np.unique(ends, return_index=True)
        released = np.add.reduceat(rel, first) if rel.size else np.zeros(0)
        if times.size and times[0] == now_s:
            free_now += float(released[0])
            times, released = times[1:], released[1:]
        self.times: Floats = np.concatenate(([now_s], times))
        self.free: Floats = free_now + np.concatenate(([0.0], np.cumsum(released)))
        self.reserved = False

    def _split(self, t: float) -> int:
        """Index of the step starting exactly at ``t`` (inserting a breakpoint if needed)."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        if self.times[i] == t:
            return i
        self.times = np.insert(self.times, i + 1, t)
        self.free = np.insert(self.free, i + 1, self.free[i])
        return i + 1

    def min_free(self, start_s: float, end_s: float) -> float:
        i = max(int(np.searchsorted(self.times, start_s, side="right")) - 1, 0)
        j = max(int(np.searchsorted(self.times, end_s, side="left")), i + 1)
        return float(self.free[i:j].min())

    def fits(self, start_s: float, duration_s: float, milli: float) -> bool:
        return self.min_free(start_s, start_s + duration_s) >= milli

    def earliest(self, after_s: float, duration_s: float, milli: float, strictly_after: bool) -> float | None:
        """Earliest step start >= ``after_s`` (or > when ``strictly_after``) where ``milli`` fits for the
        whole duration; None if never (the job needs more than the pool will ever have free)."""
        first = int(np.searchsorted(self.times, after_s, side="right")) if strictly_after else 0
        if first >= self.times.size:
            return None
        starts = np.maximum(self.times[first:], after_s)
        short = (self.free < milli).astype(np.int64)
        blocked_before = np.concatenate(([0], np.cumsum(short)))
        ends = np.searchsorted(self.times, starts + duration_s, side="left")
        idx = np.arange(first, self.times.size)
        ends = np.maximum(ends, idx + 1)
        ok = (blocked_before[ends] - blocked_before[idx]) == 0
        hits = np.flatnonzero(ok)
        return float(starts[hits[0]]) if hits.size else None

    def take(self, start_s: float, duration_s: float, milli: float) -> None:
        i = self._split(start_s)
        j = self._split(start_s + duration_s)
        self.free[i:j] -= milli
