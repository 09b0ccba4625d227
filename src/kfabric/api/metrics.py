"""Prometheus metrics of a kfabric server (``GET /metrics``) and the request observer (API latency by route,
``X-Request-ID``). The list of metrics, the dashboard and the renamed metrics are in docs/operations-observability.md.

Three sources, so that a scrape never walks the job table:

* **events** (counters and histograms): each controller tick's :class:`~kfabric.service.controller.TickReport`
  (admissions, preemptions, requeues, ends, failures, cycle time, submit-to-start latency), each API request
  (latency by route template) and each backend call (``service/instrumented.py``). Per process: Prometheus sums
  them over the servers.
* **fleet state** (gauges), built at most every :attr:`StateCollector.cache_s` seconds: GPUs per pool from the
  controller's live snapshot, pending jobs by reason and priority from its queue, grants from the (small) grants
  table, jobs by state from grouped counts on ``ix_jobs_state`` (active states each refresh; the ended states, whose
  count only grows, every :attr:`StateCollector.slow_cache_s`). Only the leader exports them (its snapshot is the
  live one), so a sum over servers counts each GPU once; a standby exports ``kfabric_leader 0`` and its own events.
* **leadership**: ``kfabric_leader``, ``kfabric_lease_epoch``, the last cycle's time and age, from
  ``rt.leadership`` where the server has one (``kfabric serve``), else leader 1 and epoch 0 (a runtime that drives
  its controller itself).

Label cardinality: pools, sites, owners, models, programs, reason codes and priority classes are tens; grants can
be thousands, so grant credit is per program, plus the :data:`TOP_GRANTS` grants with the least credit left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy.orm import Session
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kfabric.api.deps import Caller
from kfabric.model.errors import PermissionDenied
from kfabric.model.job import JobState
from kfabric.service.actors import Role
from kfabric.service.controller import Controller, TickReport
from kfabric.service.credit import held_by_grant
from kfabric.service.fleet_queries import jobs_by_state, last_cycle_s, lease_epoch
from kfabric.service.instrumented import BUCKETS_S, call_stats
from kfabric.service.logs import REQUEST_ID, event
from kfabric.service.program_queries import grants_in_force
from kfabric.service.runtime import Runtime

log = logging.getLogger("kfabric.api")

#: roles whose tokens may read ``/metrics`` (fleet-wide counts) unless the server runs with ``--metrics-open``
METRICS_ROLES = (Role.OPERATOR, Role.PROVIDER)
#: seconds a scrape reuses the fleet gauges; ended-job counts are refreshed every ``SLOW_CACHE_S``
CACHE_S = 5.0
SLOW_CACHE_S = 60.0
#: grants with their own credit series (the ones with the least credit left)
TOP_GRANTS = 20
#: the controller lease's name in ``leases`` (service/leadership.py)
LEASE = "controller"
ACTIVE = (JobState.PENDING.value, JobState.ADMITTED.value, JobState.RUNNING.value)
ENDED = tuple(s.value for s in JobState if s.value not in ACTIVE)
POOL_LABELS = ("site", "pool", "owner", "model")

CYCLE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HOUR = 3600.0
START_BUCKETS_S = (1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, 24 * HOUR,
                   3 * 24 * HOUR, 7 * 24 * HOUR)  # fmt: skip
#: request ids a client may choose (else the server makes one)
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def metrics_reader(c: Caller) -> None:
    """Only operators and providers read ``/metrics`` (a missing or unknown token: 401)."""
    if c.actor.role not in METRICS_ROLES:
        raise PermissionDenied(
            "read /metrics",
            f"needs the operator or provider role; you are {c.actor.role.value}",
            "use an operator's or a provider's token (or the operator starts kfabric serve --metrics-open)",
        )


# ---- events: counters and histograms ----------------------------------------------------------------------------


class Events:
    """Counters and histograms fed by controller ticks and API requests (label values known in advance start at 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycle = Histogram("kfabric_cycle_seconds", "duration of a scheduling cycle (sched.cycle)",
                               buckets=CYCLE_BUCKETS_S, registry=registry)  # fmt: skip
        self.start_latency = Histogram(
            "kfabric_job_start_latency_seconds", "from submission to the first start of a job",
            buckets=START_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.admissions = _counter(registry, "kfabric_admissions", "jobs admitted, by the capacity they run on",
                                   "capacity", ("reserved", "shared", "borrowed"))  # fmt: skip
        self.preemptions = Counter("kfabric_preemptions", "running jobs asked to stop for another", registry=registry)
        self.requeues = _counter(registry, "kfabric_requeues", "attempts requeued, by cause", "cause",
                                 ("preempted", "lost", "withdrawn"))  # fmt: skip
        self.ended = _counter(registry, "kfabric_jobs_ended", "jobs that ended, by final state", "state",
                              ("succeeded", "failed", "cancelled", "timeout"))  # fmt: skip
        self.failures = _counter(registry, "kfabric_job_failures", "jobs that failed, by cause", "cause",
                                 ("failed", "timeout", "launch_refused"))  # fmt: skip
        self.http = Histogram(
            "kfabric_http_request_duration_seconds", "API requests, by method, route template and status",
            ["method", "route", "status"], buckets=HTTP_BUCKETS_S, registry=registry,
        )  # fmt: skip

    def observe_tick(self, rep: TickReport) -> None:
        self.cycle.observe(rep.cycle_ms / 1000.0)
        self.preemptions.inc(rep.preempting)
        for counter, counts in ((self.admissions, rep.admitted_by), (self.requeues, rep.requeue_causes),
                                (self.ended, rep.ended_states), (self.failures, rep.failures)):  # fmt: skip
            for label, n in counts.items():
                counter.labels(label).inc(n)
        for wait in rep.start_waits_s:
            self.start_latency.observe(wait)


def _counter(registry: CollectorRegistry, name: str, doc: str, label: str, values: Sequence[str]) -> Counter:
    counter = Counter(name, doc, [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter


# ---- fleet state: gauges from the live snapshot and grouped counts ---------------------------------------------


@dataclass
class _Cache:
    families: list[Metric] = field(default_factory=list)
    at: float = -float("inf")
    ended: dict[str, int] = field(default_factory=dict)
    ended_at: float = -float("inf")
    build_s: float = 0.0


class StateCollector:
    """The gauges of the fleet's state (a ``prometheus_client`` collector), rebuilt at most every ``cache_s``."""

    def __init__(self, rt: Runtime, cache_s: float = CACHE_S, slow_cache_s: float = SLOW_CACHE_S,
                 top_grants: int = TOP_GRANTS) -> None:  # fmt: skip
        self.rt = rt
        self.cache_s = cache_s
        self.slow_cache_s = slow_cache_s
        self.top_grants = top_grants
        self._cache = _Cache()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._cache.at >= self.cache_s:
                self._cache.families = self._build(now)
                self._cache.at = now
                self._cache.build_s = time.monotonic() - now
            families = list(self._cache.families)
            build_s = self._cache.build_s
        yield from families
        yield from _backend_families(self.rt.controller)
        yield _gauge("kfabric_metrics_build_seconds", "time the last rebuild of the fleet gauges took", build_s)

    def _build(self, now: float) -> list[Metric]:
        leader, epoch = leadership(self.rt)
        with self.rt.sessions() as s:
            out = _lease_families(self.rt, s, leader, epoch)
            if not leader:
                return out
            out.append(self._jobs_by_state(s, now))
            with _holding(self.rt.controller) as ctl:
                if ctl is None:  # a tick holds the snapshot for long: keep the last fleet gauges
                    return out + [f for f in self._cache.families if f.name not in _LEASE_NAMES | {"kfabric_jobs"}]
                out += _fleet_families(ctl)
                out += _grant_families(s, ctl, self.rt.clock(), self.top_grants)
        return out

    def _jobs_by_state(self, s: Session, now: float) -> Metric:
        counts = dict.fromkeys((js.value for js in JobState), 0)
        counts.update(jobs_by_state(s, ACTIVE))
        if now - self._cache.ended_at >= self.slow_cache_s:
            self._cache.ended = jobs_by_state(s, ENDED)
            self._cache.ended_at = now
        counts.update(self._cache.ended)
        family = GaugeMetricFamily("kfabric_jobs", "jobs by state (ended states refreshed every minute)",
                                   labels=["state"])  # fmt: skip
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        return family


_LEASE_NAMES = frozenset(
    {"kfabric_leader", "kfabric_lease_epoch", "kfabric_last_cycle_timestamp_seconds", "kfabric_last_cycle_age_seconds"}
)


def leadership(rt: Runtime) -> tuple[bool, int]:
    """Whether this server runs the controller now, and the lease epoch it holds. A runtime without a leadership
    object (one server driving its controller itself) is the leader of epoch 0."""
    lead = getattr(rt, "leadership", None)
    if lead is None:
        return True, 0
    epoch = getattr(lead, "epoch", None)
    leader = bool(getattr(lead, "is_leader", epoch is not None))
    return leader, int(epoch or 0)


def _lease_families(rt: Runtime, s: Session, leader: bool, epoch: int) -> list[Metric]:
    if getattr(rt, "leadership", None) is not None and not leader:
        epoch = lease_epoch(s, LEASE)
    last = rt.controller.last_tick
    last_s = last.now_s if last is not None and leader else last_cycle_s(s)
    out: list[Metric] = [
        _gauge("kfabric_leader", "1 on the server that runs the controller, 0 on a standby", float(leader)),
        _gauge("kfabric_lease_epoch", "epoch of the controller lease (grows at every change of leader)", epoch),
    ]
    if last_s is not None:  # no series before the first cycle: alert on absent() or on the age
        out.append(_gauge("kfabric_last_cycle_timestamp_seconds", "when the last scheduling cycle ran", last_s))
        age = max(0.0, rt.clock() - last_s)
        out.append(_gauge("kfabric_last_cycle_age_seconds", "seconds since the last scheduling cycle", age))
    return out


@contextlib.contextmanager
def _holding(ctl: Controller, timeout_s: float = 1.0) -> Iterator[Controller | None]:
    """The controller with its tick lock held (its snapshot does not change meanwhile), or None after
    ``timeout_s`` (a long tick)."""
    lock = getattr(ctl, "_lock", None)
    if lock is None:
        yield ctl
        return
    if not lock.acquire(timeout=timeout_s):
        yield None
        return
    try:
        yield ctl
    finally:
        lock.release()


def _fleet_families(ctl: Controller) -> list[Metric]:
    live = ctl.live
    cap = live.snap.capacity
    labels = {p.index: (cap.sites[p.site].name, p.name, p.owner, p.model) for p in cap.pools}
    allocated: dict[int, float] = defaultdict(float)
    lent: dict[int, float] = defaultdict(float)
    for run in live.snap.running.values():
        pool = cap.pool_by_name[run.placement.pool].index
        allocated[pool] += run.gpus
        if run.borrowed:
            lent[pool] += run.gpus
    out_of_service: dict[int, float] = defaultdict(float)
    for node in live.out_nodes:
        pool = int(cap.node_pool[node])
        out_of_service[pool] += cap.pools[pool].gpus_per_node
    values = {
        "kfabric_gpus_installed": ("GPUs of the pool", {p.index: float(p.gpus) for p in cap.pools}),
        "kfabric_gpus_online": ("GPUs on nodes that take work (pool online, node in service)",
                                {p.index: cap.pool_up_milli[p.index] / 1000.0 for p in cap.pools}),
        "kfabric_gpus_allocated": ("GPUs held by admitted and running jobs", allocated),
        "kfabric_gpus_lent": ("GPUs held by work on borrowed capacity (reclaimed first)", lent),
        "kfabric_gpus_out_of_service": ("GPUs on drained, down or failed nodes", out_of_service),
    }  # fmt: skip
    out: list[Metric] = []
    for name, (doc, by_pool) in values.items():
        family = GaugeMetricFamily(name, doc + ", by site, pool, owner and GPU model", labels=list(POOL_LABELS))
        for index, pool_labels in labels.items():
            family.add_metric(list(pool_labels), by_pool.get(index, 0.0))
        out.append(family)
    out.append(_gauge("kfabric_pending_queue", "jobs in the scheduler's queue", len(live.queue)))
    out.append(_pending_by_reason(ctl))
    return out


def _pending_by_reason(ctl: Controller) -> Metric:
    reasons: dict[str, tuple[str, str, float | None]] = getattr(ctl, "_reasons", {})
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for job in ctl.live.queue:
        reason = reasons.get(job.id)
        counts[(reason[0] if reason is not None else "new", job.priority.name.lower())] += 1
    family = GaugeMetricFamily("kfabric_jobs_pending", "jobs waiting, by pending reason and priority class",
                               labels=["reason", "priority"])  # fmt: skip
    for (reason_code, priority), n in sorted(counts.items()):
        family.add_metric([reason_code, priority], n)
    return family


def _grant_families(s: Session, ctl: Controller, now_s: float, top: int) -> list[Metric]:
    rows = grants_in_force(s, now_s)
    held = held_by_grant(s)
    credit: dict[str, float] = defaultdict(float)
    remaining: dict[str, float] = defaultdict(float)
    per_grant: list[tuple[float, str, str]] = []
    reserved: dict[tuple[str, ...], float] = defaultdict(float)
    in_use: dict[tuple[str, ...], float] = defaultdict(float)
    own_left = dict(ctl.live.snap.own_gpus)  # guaranteed GPUs in use per (project, model), shared out by grant
    for gid, grant, program, project, model, gpus, credit_h, used_h in rows:
        if credit_h > 0:
            left_s = max(0.0, credit_h - used_h - held.get(gid, 0.0)) * HOUR
            credit[program] += credit_h * HOUR
            remaining[program] += left_s
            per_grant.append((left_s, grant, program))
        if model is not None and gpus > 0:
            used = min(float(gpus), own_left.get((project, model), 0.0))
            own_left[(project, model)] = own_left.get((project, model), 0.0) - used
            reserved[(program, model)] += gpus
            in_use[(program, model)] += used
    return [
        _by("kfabric_program_credit_su_seconds", "credit of grants in force, by program (SU-seconds: SU-hours x 3600)",
            ["program"], {(p,): v for p, v in credit.items()}),
        _by("kfabric_program_credit_remaining_su_seconds",
            "credit left (less used and held by running jobs), by program (SU-seconds)",
            ["program"], {(p,): v for p, v in remaining.items()}),
        _by("kfabric_grant_credit_remaining_su_seconds",
            f"credit left of the {top} grants with the least left (SU-seconds)", ["grant", "program"],
            {(g, p): v for v, g, p in sorted(per_grant)[:top]}),
        _by("kfabric_program_reserved_gpus", "GPUs reserved by grants in force, by program and GPU model",
            ["program", "model"], reserved),
        _by("kfabric_program_reserved_gpus_in_use", "reserved GPUs in use by their projects, by program and GPU model",
            ["program", "model"], in_use),
    ]  # fmt: skip


def _by(name: str, doc: str, labels: list[str], values: Mapping[tuple[str, ...], float]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _backend_families(ctl: Controller) -> Iterable[Metric]:
    calls = CounterMetricFamily("kfabric_backend_calls", "backend calls, by backend, call and outcome",
                                labels=["backend", "call", "outcome"])  # fmt: skip
    durations = HistogramMetricFamily("kfabric_backend_call_duration_seconds", "backend call durations",
                                      labels=["backend", "call"])  # fmt: skip
    for stats in call_stats(ctl.backends):
        for call_key, n in sorted(stats.calls().items()):
            calls.add_metric(list(call_key), n)
        for key, d in sorted(stats.durations().items()):
            cumulative, buckets = 0, []
            for bound, in_bucket in zip([*BUCKETS_S, float("inf")], d.buckets, strict=True):
                cumulative += in_bucket
                buckets.append((_bound(bound), float(cumulative)))
            durations.add_metric(list(key), buckets, d.sum_s)
    return (calls, durations)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# ---- the API: request ids and latency by route -----------------------------------------------------------------


class ObserveRequests:
    """ASGI middleware (the outermost): gives each request an id (the client's ``X-Request-ID`` when it is 1-128 of
    ``A-Za-z0-9._:-``, else a new one), sets it for the logs of the request and echoes it in the response, and times
    the request into ``kfabric_http_request_duration_seconds`` by method, route template (never the raw path) and
    status. One ``http.request`` event per request is logged at DEBUG (5xx answers at ERROR)."""

    def __init__(self, app: ASGIApp, events: Events, templates: RouteTemplates) -> None:
        self.app = app
        self.events = events
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)
        status = 500  # what the server answers when the application ends without a response
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method, route = scope["method"], self.templates(scope)
        self.events.http.labels(method, route, str(status)).observe(seconds)
        level = logging.ERROR if status >= 500 else logging.DEBUG
        event(log, "http.request", level, method=method, route=route, status=status, duration_s=round(seconds, 6))


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            given = str(value.decode("latin-1"))
            if REQUEST_ID_PATTERN.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class RouteTemplates:
    """The template of the route that served a request (``/v1/jobs/{job_id}``): the one routing recorded in the
    scope, else (requests answered before routing: the fast submit path, request limits) the first route of the
    application's OpenAPI document, or its other routes (``/docs``), whose path matches, preferring one that allows
    the method; else ``unmatched``. Never the raw path: the label's values are the application's routes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._compiled: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None

    def __call__(self, scope: Scope) -> str:
        found = scope.get("route")
        template = getattr(found, "path_format", None) or getattr(found, "path", None)
        if isinstance(template, str):
            return str(template)
        if self._compiled is None:
            self._compiled = self._compile()
        path, method = scope.get("path", ""), scope.get("method", "")
        matching = [(methods, template) for regex, methods, template in self._compiled if regex.fullmatch(path)]
        for methods, template in matching:
            if method in methods:
                return template
        return matching[0][1] if matching else "unmatched"

    def _compile(self) -> list[tuple[re.Pattern[str], frozenset[str], str]]:
        out = []
        for template, operations in self.app.openapi().get("paths", {}).items():
            regex, _, _ = compile_path(template)
            out.append((regex, frozenset(m.upper() for m in operations), template))
        for route in self.app.router.routes:
            if isinstance(route, Route):
                out.append((route.path_regex, frozenset(route.methods or ()), route.path_format))
        return out


# ---- installation ------------------------------------------------------------------------------------------------


@dataclass
class Metrics:
    """What :func:`install_metrics` set up: the registry, the event metrics and the fleet gauges' collector."""

    registry: CollectorRegistry
    events: Events
    state: StateCollector

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def install_metrics(app: FastAPI, rt: Runtime, metrics_open: bool = False, cache_s: float = CACHE_S) -> Metrics:
    """Add ``GET /metrics`` (an operator's or a provider's token unless ``metrics_open``) and the request observer
    (add it after every other middleware: it must be the outermost). ``app.state.metrics`` holds the result."""
    # no ``_created`` series beside every counter and histogram (a choice for the whole process)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    events = Events(registry)
    state = StateCollector(rt, cache_s=cache_s)
    registry.register(state)
    observers: Any = getattr(getattr(rt, "controller", None), "observers", None)  # none: an app for its OpenAPI only
    if observers is not None:
        observers.append(events.observe_tick)
    metrics = Metrics(registry, events, state)
    guard = [] if metrics_open else [Depends(metrics_reader)]

    @app.get("/metrics", tags=["ops"], response_class=Response, dependencies=guard)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(ObserveRequests, events=events, templates=RouteTemplates(app))
    app.state.metrics = metrics
    return metrics
