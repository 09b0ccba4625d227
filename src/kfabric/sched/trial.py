"""One trial: every tentative change a scheduling step makes, kept or undone whole.

    with Trial(cap, profiles, now) as t:
        t.free(victim)          # its GPUs come free now; its pool's availability profile frees them early
        ...                     # place, admit (capacity taken through ``cap`` is logged too)
        t.commit()              # keep it all; leaving the block without commit undoes it all

Trials nest: a trial opened inside another keeps its changes in the outer one's undo log on commit (the outer
trial can still undo them); the outermost trial's commit makes them permanent (``Capacity.forget``). Undoing
puts every capacity number and bucket order back exactly (``Capacity.rollback``), and gives each freed
victim's early release in its availability profile back, in the order the victims were freed.

The cost is the capacity's mark and rollback plus one small object per trial: trials run per preemption try,
each of which places a job (far more work).
"""

from __future__ import annotations

from types import TracebackType

from kfabric.sched.capacity import Capacity
from kfabric.sched.profile import Profile
from kfabric.sched.snapshot import RunningJob


class Trial:
    """Tentative changes to a capacity index and the availability profiles of its pools (see the module doc)."""

    def __init__(self, cap: Capacity, profiles: dict[int, Profile], now_s: float) -> None:
        self.cap = cap
        self.profiles = profiles
        self.now = now_s
        #: the victims freed in this trial and not given back, in the order they were freed
        self.freed: list[RunningJob] = []
        self.committed = False
        self._outer = False
        self._mark = 0

    def __enter__(self) -> Trial:
        cap = self.cap
        self._outer = not cap.logging
        cap.logging = True
        self._mark = cap.mark()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        cap = self.cap
        if self.committed and kind is None:
            if self._outer:
                cap.forget()
        else:
            cap.rollback(self._mark)
            for run in self.freed:
                self._release_early(run, False)
        if self._outer:
            cap.logging = False

    def commit(self) -> None:
        """Keep every change of this trial (made permanent when the block ends, if no outer trial is open)."""
        self.committed = True

    def free(self, run: RunningJob) -> None:
        """Take a (trial) victim off its GPUs: they come free now, and in its pool's availability profile too
        (so a reservation does not stop a preemption that does not delay it)."""
        cap = self.cap
        for s in run.placement.shares:
            cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        self._release_early(run, True)
        self.freed.append(run)

    def restore(self, run: RunningJob) -> None:
        """Put a victim freed in this trial back on its GPUs (the placement did not need them)."""
        cap = self.cap
        for s in run.placement.shares:
            cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        self._release_early(run, False)
        self.freed.remove(run)

    def _release_early(self, run: RunningJob, released: bool) -> None:
        profile = self.profiles.get(self.cap.pool_by_name[run.placement.pool].index) if self.profiles else None
        if profile is not None and run.expected_end_s > self.now:
            profile.take(self.now, run.expected_end_s - self.now, -run.milli if released else run.milli)
