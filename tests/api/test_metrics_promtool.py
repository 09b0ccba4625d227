"""Issue 16, observability: ``/metrics`` of a busy server (jobs submitted, ticks run, a job preempted, one failed,
one cancelled, one waiting) passes ``promtool check metrics`` and exports what docs/operations-observability.md
lists; requests get an ``X-Request-ID`` and are timed by route template; the fleet gauges are cached, counted on
the state index, and exported by the leader only.

promtool comes from Debian's ``prometheus`` package (``apt-get install -y --no-install-recommends prometheus``);
without it the promtool test is skipped, unless ``KFABRIC_REQUIRE_PROMTOOL=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from api_world import Api, Clock
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from kfabric.api.app import create_app
from kfabric.api.metrics import ACTIVE, Metrics
from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service.fleet_queries import state_counts
from kfabric.service.instrumented import CallStats, instrument
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t

LOW = {"project": "tinyml-llm", "gpus": 8, "priority": "low", "time_limit_s": 7200.0, "runtime_estimate_s": 5000.0}


@dataclass
class Busy:
    api: Api
    metrics: Metrics
    jobs: dict[str, int]

    def scrape(self) -> str:
        r = self.api.get("/metrics", self.api.operator)
        assert r.status_code == 200, r.text
        return r.text


def _submit(api: Api, **spec: Any) -> int:
    r = api.post("/v1/jobs", api.operator, spec)
    assert r.status_code == 201, r.text
    job_id: int = r.json()["id"]
    return job_id


@contextmanager
def open_busy(db_url: str) -> Iterator[Busy]:
    """A server on the lab fleet (48 GPUs) with an instrumented sim backend, after: six low-priority jobs fill the
    fleet and run past the policy's minimum run time; an urgent job preempts one of them (requeued); a job fails
    (``exit 3``); one is cancelled while pending; a low-priority 16-GPU job keeps waiting."""
    clock = Clock()
    backends = instrument({"sim": SimBackend(clock)}, CallStats())
    rt = open_runtime(db_url, load_policy("kfabric"), backends, fleet="lab", clock=clock)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as client:
            api = Api(rt, client, clock)
            metrics: Metrics = client.app.state.metrics  # type: ignore[attr-defined]
            metrics.state.cache_s = 0.0  # every scrape sees the last tick
            jobs = {f"low-{i}": _submit(api, **LOW) for i in range(6)}
            api.tick(60.0, times=12)  # admitted, started, past min_run_s (600 s)
            jobs["urgent"] = _submit(api, **{**LOW, "priority": "urgent", "runtime_estimate_s": 300.0})
            failing = {"priority": "normal", "command": "exit 3", "gpus": 1, "runtime_estimate_s": 60.0}
            jobs["failing"] = _submit(api, **{**LOW, **failing})
            jobs["waiting"] = _submit(api, **{**LOW, "gpus": 16})
            jobs["cancelled"] = _submit(api, **{**LOW, "gpus": 16, "name": "to-cancel"})
            assert api.post(f"/v1/jobs/{jobs['cancelled']}/cancel", api.operator).status_code == 200
            api.tick(60.0, times=15)
            yield Busy(api, metrics, jobs)
    finally:
        rt.close()


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    with open_busy(f"sqlite:///{tmp_path_factory.mktemp('busy')}/kfabric.db") as b:
        yield b


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= set(ls))


# ---- promtool ----------------------------------------------------------------------------------------------------


def test_promtool_check_metrics_passes_on_a_busy_server(busy: Busy) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("KFABRIC_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is missing and KFABRIC_REQUIRE_PROMTOOL=1: apt-get install -y prometheus")
        pytest.skip("promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    exposition = busy.scrape()
    done = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- what a busy server exports ----------------------------------------------------------------------------------

# (what, metric, labels, the least value expected)
EXPECTED: list[tuple[str, str, dict[str, str], float]] = [
    ("a cycle per tick", "kfabric_cycle_seconds_count", {}, 27),
    ("first starts", "kfabric_job_start_latency_seconds_count", {}, 7),
    ("admissions", "kfabric_admissions_total", {}, 8),
    ("the urgent job's preemption", "kfabric_preemptions_total", {}, 1),
    ("its victim requeued", "kfabric_requeues_total", {"cause": "preempted"}, 1),
    ("the failing job", "kfabric_job_failures_total", {"cause": "failed"}, 1),
    ("its end", "kfabric_jobs_ended_total", {"state": "failed"}, 1),
    ("the waiting job", "kfabric_jobs_pending", {"priority": "low"}, 1),
    ("the queue", "kfabric_pending_queue", {}, 1),
    ("jobs by state", "kfabric_jobs", {"state": "cancelled"}, 1),
    ("GPUs installed", "kfabric_gpus_installed", {}, 48),
    ("GPUs online", "kfabric_gpus_online", {"pool": "h100", "site": "lab-gov", "owner": "government"}, 32),
    ("GPUs allocated", "kfabric_gpus_allocated", {"model": "H100"}, 8),
    ("launches", "kfabric_backend_calls_total", {"backend": "sim", "call": "launch", "outcome": "ok"}, 8),
    ("the preemption's terminate", "kfabric_backend_calls_total", {"call": "terminate", "outcome": "ok"}, 1),
    ("polls timed", "kfabric_backend_call_duration_seconds_count", {"call": "poll"}, 27),
    ("submissions timed", "kfabric_http_request_duration_seconds_count", {"route": "/v1/jobs"}, 10),
    ("the leader", "kfabric_leader", {}, 1),
    ("credit per program", "kfabric_program_credit_su_seconds", {"program": "lab-grants"}, 1),
    ("reserved GPUs", "kfabric_program_reserved_gpus", {"program": "lab-grants", "model": "H100"}, 8),
    ("last cycle", "kfabric_last_cycle_timestamp_seconds", {}, 1),
]


@pytest.mark.parametrize(("metric", "labels", "least"), [c[1:] for c in EXPECTED], ids=[c[0] for c in EXPECTED])
def test_a_busy_server_exports(busy: Busy, metric: str, labels: dict[str, str], least: float) -> None:
    found = samples(busy.scrape())
    assert any(n == metric for n, _ in found), f"{metric} not exported"
    assert total(found, metric, **labels) >= least


def test_gauges_agree_with_the_snapshot(busy: Busy) -> None:
    found = samples(busy.scrape())
    snap = busy.api.rt.controller.live.snap
    assert total(found, "kfabric_gpus_allocated") == pytest.approx(sum(r.gpus for r in snap.running.values()))
    lent = sum(r.gpus for r in snap.running.values() if r.borrowed)
    assert total(found, "kfabric_gpus_lent") == pytest.approx(lent)
    assert total(found, "kfabric_jobs", state="running") == len(snap.running)
    assert total(found, "kfabric_gpus_out_of_service") == 0
    assert total(found, "kfabric_lease_epoch") == 0  # no leadership object: one server, epoch 0


def test_renamed_and_raw_paths_are_gone(busy: Busy) -> None:
    exposition = busy.scrape()
    assert "kfabric_cycle_ms" not in exposition  # now the kfabric_cycle_seconds histogram
    routes = {dict(ls).get("route") for n, ls in samples(exposition) if n.startswith("kfabric_http_request")}
    assert "/v1/jobs/{job_id}/cancel" in routes
    assert not any(str(busy.jobs["cancelled"]) in (route or "") for route in routes)  # templates, not paths


# ---- request ids and route templates -----------------------------------------------------------------------------

# (case, the X-Request-ID sent, whether the answer echoes it)
REQUEST_IDS: list[tuple[str, str | None, bool]] = [
    ("client's id echoed", "client-42.retry:1", True),
    ("none sent: one made", None, False),
    ("too long: one made", "x" * 129, False),
    ("bad characters: one made", "a b\tc", False),
]


@pytest.mark.parametrize(("sent", "echoed"), [c[1:] for c in REQUEST_IDS], ids=[c[0] for c in REQUEST_IDS])
def test_every_answer_carries_a_request_id(busy: Busy, sent: str | None, echoed: bool) -> None:
    headers = {"X-Request-ID": sent} if sent is not None else {}
    r = busy.api.client.get("/healthz", headers=headers)
    got = r.headers["x-request-id"]
    assert (got == sent) is echoed and got
    if not echoed:
        assert len(got) == 32 and got.isalnum()


# (case, method, path, body, the route label and status expected)
ROUTES: list[tuple[str, str, str, Any, str, str]] = [
    ("a route with a parameter", "GET", "/v1/jobs/{id}", None, "/v1/jobs/{job_id}", "200"),
    ("an unknown path", "GET", "/no/such/path/123", None, "unmatched", "404"),
    ("the fast submit path", "POST", "/v1/jobs", {**LOW, "name": "timed"}, "/v1/jobs", "201"),
    ("a body over the limit, refused before routing", "POST", "/v1/jobs/{id}/cancel", {"pad": "x" * (1 << 20)},
     "/v1/jobs/{job_id}/cancel", "413"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "route", "status"), [c[1:] for c in ROUTES], ids=[c[0] for c in ROUTES]
)
def test_latency_is_labelled_by_route_template(
    busy: Busy, method: str, path: str, body: Any, route: str, status: str
) -> None:
    path = path.replace("{id}", str(busy.jobs["waiting"]))
    labels = {"method": method, "route": route, "status": status}
    before = total(samples(busy.scrape()), "kfabric_http_request_duration_seconds_count", **labels)
    r = busy.api.client.request(method, path, json=body, headers={"Authorization": f"Bearer {busy.api.operator}"})
    assert str(r.status_code) == status, r.text
    after = total(samples(busy.scrape()), "kfabric_http_request_duration_seconds_count", **labels)
    assert after == before + 1


# ---- collection cost and leadership --------------------------------------------------------------------------------


def test_fleet_gauges_are_cached_between_scrapes(busy: Busy, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[float] = []
    build = type(busy.metrics.state)._build

    def counted(self: Any, now: float) -> Any:
        builds.append(now)
        return build(self, now)

    monkeypatch.setattr(type(busy.metrics.state), "_build", counted)
    monkeypatch.setattr(busy.metrics.state, "cache_s", 3600.0)
    busy.metrics.state._cache.at = -float("inf")
    for _ in range(3):
        busy.scrape()
    assert len(builds) == 1


def test_active_jobs_are_counted_on_the_state_index(busy: Busy) -> None:
    with busy.api.rt.sessions() as s:
        sql = str(state_counts(ACTIVE).compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(row[-1]) for row in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_jobs_state" in plan and "SCAN jobs" not in plan.replace("USING COVERING INDEX", ""), plan


@dataclass
class Standby:
    """A stand-in for service/leadership.py's Leadership on a server that does not lead."""

    epoch: int | None = None


def test_a_standby_exports_no_fleet_gauges(busy: Busy, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = busy.api.rt
    with rt.sessions.begin() as s:
        s.merge(t.Lease(name="controller", holder="another", epoch=7, expires_at_s=0.0, renewed_at_s=0.0))
    monkeypatch.setattr(rt, "leadership", Standby(), raising=False)
    found = samples(busy.scrape())
    assert total(found, "kfabric_leader") == 0 and total(found, "kfabric_lease_epoch") == 7
    names = {n for n, _ in found}
    assert not names & {"kfabric_gpus_allocated", "kfabric_jobs", "kfabric_jobs_pending"}
    assert "kfabric_http_request_duration_seconds_count" in names  # its own requests still count
    monkeypatch.setattr(rt, "leadership", Standby(epoch=8), raising=False)
    found = samples(busy.scrape())
    assert total(found, "kfabric_leader") == 1 and total(found, "kfabric_lease_epoch") == 8


@pytest.mark.integration
def test_promtool_clean_on_postgresql_too(pg_server: Any) -> None:
    """The grouped counts and the grant query on PostgreSQL (the exposition's shape does not depend on the store)."""
    url = pg_server.create_database("t_metrics_promtool")
    try:
        with open_busy(url) as b:
            found = samples(b.scrape())
            assert total(found, "kfabric_preemptions_total") >= 1
            assert total(found, "kfabric_jobs", state="failed") >= 1
    finally:
        pg_server.drop_database("t_metrics_promtool")
