"""Backends that count and time their calls: :class:`InstrumentedBackend` wraps any backend and records every call
(``launch``, ``terminate``, ``poll``, and any other public method a backend adds, such as ``fence``) in a shared
:class:`CallStats` by backend, call and outcome, and logs it as a ``backend.call`` event.

Outcomes: ``ok``; ``unavailable`` (the backend raised :class:`BackendUnavailable`: the cluster cannot be reached,
or a fence refused the call); ``refused`` (``ValueError``/``OSError``: the backend refused the launch, e.g. no
POSIX account); ``error`` (anything else). The exception always reaches the caller unchanged.

``/metrics`` (``kfabric.api.metrics``) reads the stats of the controller's backends as
``kfabric_backend_calls_total{backend,call,outcome}`` and ``kfabric_backend_call_duration_seconds{backend,call}``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kfabric.backends.base import Backend, BackendUnavailable, LaunchSpec, RunReport
from kfabric.service.logs import event

log = logging.getLogger("kfabric.backend")
_T = TypeVar("_T")

#: upper bounds (seconds) of the call-duration histogram's buckets
BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = ("ok", "unavailable", "refused", "error")
#: calls logged at INFO when they succeed (the others, ``poll`` every tick, at DEBUG)
LOUD_CALLS = frozenset({"launch", "terminate"})


@dataclass
class Durations:
    """A histogram of call durations: counts per bucket of :data:`BUCKETS_S` (not cumulative; the last is +Inf),
    their sum and count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    sum_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.count += 1

    def copy(self) -> Durations:
        return Durations(list(self.buckets), self.sum_s, self.count)


class CallStats:
    """Counts and durations of backend calls, shared by every wrapped backend of a process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], Durations] = {}

    def observe(self, backend: str, call: str, outcome: str, seconds: float) -> None:
        with self._lock:
            key = (backend, call, outcome)
            self._calls[key] = self._calls.get(key, 0) + 1
            self._durations.setdefault((backend, call), Durations()).observe(seconds)

    def declare(self, backend: str, calls: tuple[str, ...] = ("launch", "terminate", "poll")) -> None:
        """Make the series of ``backend``'s calls exist at zero (so rates and alerts see them before any call)."""
        with self._lock:
            for call in calls:
                for outcome in OUTCOMES:
                    self._calls.setdefault((backend, call, outcome), 0)
                self._durations.setdefault((backend, call), Durations())

    def calls(self) -> dict[tuple[str, str, str], int]:
        """Calls by ``(backend, call, outcome)``."""
        with self._lock:
            return dict(self._calls)

    def durations(self) -> dict[tuple[str, str], Durations]:
        """Durations by ``(backend, call)``."""
        with self._lock:
            return {key: d.copy() for key, d in self._durations.items()}


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    if isinstance(exc, ValueError | OSError):
        return "refused"
    return "error"


class InstrumentedBackend:
    """``inner`` with every call counted and timed under ``label`` (the controller's name for the backend)."""

    def __init__(self, inner: Backend, stats: CallStats, label: str | None = None) -> None:
        self.inner = inner
        self.stats = stats
        self.name = inner.name
        self.label = label or inner.name
        stats.declare(self.label)

    def launch(self, spec: LaunchSpec) -> None:
        self._call("launch", lambda: self.inner.launch(spec), {"job_id": spec.job_id, "attempt": spec.attempt})

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        fields = {"job_id": job_id, "attempt": attempt, "grace_s": grace_s}
        self._call("terminate", lambda: self.inner.terminate(job_id, attempt, grace_s), fields)

    def poll(self) -> list[RunReport]:
        return self._call("poll", self.inner.poll, {})

    def __getattr__(self, name: str) -> Any:
        """Other attributes are the inner backend's; its other public methods are counted and timed too."""
        if name in ("inner", "stats", "label") or name.startswith("_"):
            raise AttributeError(name)
        found = getattr(self.inner, name)
        if not callable(found):
            return found

        def timed(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, lambda: found(*args, **kwargs), {})

        return timed

    def _call(self, call: str, do: Callable[[], _T], fields: dict[str, Any]) -> _T:
        t0 = time.perf_counter()
        try:
            result = do()
        except Exception as exc:
            seconds = time.perf_counter() - t0
            self.stats.observe(self.label, call, _outcome(exc), seconds)
            event(log, "backend.call", logging.INFO, backend=self.label, call=call, outcome=_outcome(exc),
                  duration_s=round(seconds, 6), reason=str(exc), **fields)  # fmt: skip
            raise
        seconds = time.perf_counter() - t0
        self.stats.observe(self.label, call, "ok", seconds)
        level = logging.INFO if call in LOUD_CALLS else logging.DEBUG
        event(log, "backend.call", level, backend=self.label, call=call, outcome="ok", duration_s=round(seconds, 6),
              **fields)  # fmt: skip
        return result


def instrument(backends: Mapping[str, Backend], stats: CallStats) -> dict[str, Backend]:
    """Each backend wrapped, labelled with its key (the controller's name for it: ``sim``, ``local``, a Slurm
    cluster's name)."""
    return {key: InstrumentedBackend(backend, stats, key) for key, backend in backends.items()}


def call_stats(backends: Mapping[str, object]) -> list[CallStats]:
    """The distinct stats of the instrumented backends among ``backends`` (usually one)."""
    found: dict[int, CallStats] = {}
    for backend in backends.values():
        if isinstance(backend, InstrumentedBackend):
            found.setdefault(id(backend.stats), backend.stats)
    return list(found.values())
