"""The sim backend: a virtual cluster, in memory, for demos and tests.

Nothing runs. An attempt starts at ``clock()`` when launched and ends ``runtime / speedup`` seconds of clock
time later, where ``runtime`` is ``spec.runtime_s`` (or ``default_runtime_s``):

* ``runtime <= time_limit_s``: it succeeds, unless its command starts with ``exit N`` (``N != 0``): then it
  fails with exit code ``N``;
* ``runtime > time_limit_s``: it ends in TIMEOUT at the time limit (``time_limit_s / speedup``).

:meth:`SimBackend.terminate` cancels a running attempt at ``clock()``; :meth:`SimBackend.fail_node` makes
every running attempt on a node LOST; ``available = False`` makes the backend unreachable (launch, terminate
and poll raise :class:`~kfabric.backends.base.BackendUnavailable` and change nothing). Given the clock, all of
it is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kfabric.backends.base import BackendUnavailable, LaunchSpec, RunReport, RunState

_EXIT = re.compile(r"\s*exit\s+(\d+)\b")


@dataclass(slots=True)
class _Attempt:
    spec: LaunchSpec
    started_at_s: float
    #: how the attempt ends by itself, and when
    end_at_s: float
    end_state: RunState
    exit_code: int | None
    message: str
    #: set when the attempt was ended from outside (cancelled, lost) before it ended by itself
    stopped: tuple[RunState, float, str] | None = None


class SimBackend:
    """A virtual cluster driven by ``clock``; see the module docstring."""

    name = "sim"

    def __init__(self, clock: Callable[[], float], speedup: float = 1.0, default_runtime_s: float = 60.0) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        self.clock = clock
        self.speedup = speedup
        self.default_runtime_s = default_runtime_s
        #: when False the cluster is unreachable: launch, terminate and poll raise BackendUnavailable
        self.available = True
        self._attempts: dict[tuple[str, int], _Attempt] = {}

    def _check_available(self) -> None:
        if not self.available:
            raise BackendUnavailable("the simulated cluster is unavailable")

    def _running(self, att: _Attempt, now: float) -> bool:
        return att.stopped is None and now < att.end_at_s

    def launch(self, spec: LaunchSpec) -> None:
        self._check_available()
        key = (spec.job_id, spec.attempt)
        if key in self._attempts:
            return
        now = self.clock()
        runtime = self.default_runtime_s if spec.runtime_s is None else spec.runtime_s
        if runtime > spec.time_limit_s:
            end, state, code, message = spec.time_limit_s, RunState.TIMEOUT, None, "time limit reached"
        else:
            match = _EXIT.match(spec.command)
            code = int(match.group(1)) if match else 0
            end = runtime
            state = RunState.FAILED if code else RunState.SUCCEEDED
            message = f"exit code {code}" if code else ""
        self._attempts[key] = _Attempt(spec, now, now + end / self.speedup, state, code, message)

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        self._check_available()
        att = self._attempts.get((job_id, attempt))
        now = self.clock()
        if att is None or not self._running(att, now):
            return
        att.stopped = (RunState.CANCELLED, now, "cancelled")

    def fail_node(self, node: str) -> list[tuple[str, int]]:
        """Make every attempt running on ``node`` LOST now; returns their ``(job_id, attempt)``."""
        now = self.clock()
        lost = []
        for key, att in self._attempts.items():
            if self._running(att, now) and any(part.node == node for part in att.spec.nodes):
                att.stopped = (RunState.LOST, now, f"node {node} failed")
                lost.append(key)
        return lost

    def poll(self) -> list[RunReport]:
        self._check_available()
        now = self.clock()
        reports = []
        for (job_id, attempt), att in self._attempts.items():
            if att.stopped is not None:
                state, ended, message = att.stopped
                reports.append(RunReport(job_id, attempt, state, att.started_at_s, ended, None, message))
            elif now >= att.end_at_s:
                reports.append(
                    RunReport(
                        job_id, attempt, att.end_state, att.started_at_s, att.end_at_s, att.exit_code, att.message
                    )
                )
            else:
                reports.append(RunReport(job_id, attempt, RunState.RUNNING, att.started_at_s))
        return reports

    def forget(self, job_id: str, attempt: int) -> bool:
        """Drop a finished attempt (once the controller recorded it). Returns whether it was dropped."""
        att = self._attempts.get((job_id, attempt))
        if att is None or self._running(att, self.clock()):
            return False
        del self._attempts[(job_id, attempt)]
        return True
