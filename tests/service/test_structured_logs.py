"""Issue 16: structured logs (one JSON line per event, with job id and request id), instrumented backends (calls
counted and timed by backend and outcome), and policy in one place (the live policy's preemption grace reaches the
backend's terminate, also after the policy is swapped at run time)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from kfabric.api.app import create_app
from kfabric.backends.base import BackendUnavailable, LaunchSpec, RunReport
from kfabric.backends.sim import SimBackend
from kfabric.cli.main import main
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.actors import Actor
from kfabric.service.auth import authenticate
from kfabric.service.controller import Controller
from kfabric.service.instrumented import CallStats, InstrumentedBackend
from kfabric.service.logs import REQUEST_ID, JsonFormatter, TextFormatter, configure, event
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
LOW = {"gpus": 8, "priority": "low", "time_limit_s": 7200.0, "runtime_estimate_s": 5000.0}


# ---- the formats -------------------------------------------------------------------------------------------------


def _record(msg: str, fields: dict[str, Any] | None = None, exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("kfabric.test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    captured: list[logging.LogRecord] = []
    handler.emit = captured.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        if fields is not None:
            event(logger, msg, logging.WARNING, **fields)
        elif exc:
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logger.exception(msg)
        else:
            logger.warning(msg)
    finally:
        logger.removeHandler(handler)
    return captured[0]


# (case, message, fields, with an exception, request id, keys and values the JSON line must hold)
JSON_CASES: list[tuple[str, str, dict[str, Any] | None, bool, str | None, dict[str, Any]]] = [
    ("an event with its fields", "job.admit", {"job_id": 7, "pool": "h100"}, False, None,
     {"event": "job.admit", "job_id": 7, "pool": "h100", "level": "warning", "logger": "kfabric.test"}),
    ("a plain log line", "backend %s down", None, False, None, {"message": "backend %s down"}),
    ("inside a request", "http.request", {"status": 200}, False, "req-1", {"request_id": "req-1", "status": 200}),
    ("a reserved field renamed", "job.end", {"message": "exit 3", "level": 2}, False, None,
     {"message_": "exit 3", "level_": 2, "level": "warning"}),
    ("an exception", "tick failed", None, True, None, {"message": "tick failed"}),
    ("a value JSON cannot hold", "x", {"when": datetime(2026, 1, 1, tzinfo=UTC)}, False, None,
     {"when": "2026-01-01 00:00:00+00:00"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("msg", "fields", "exc", "request_id", "want"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_json_lines(
    msg: str, fields: dict[str, Any] | None, exc: bool, request_id: str | None, want: dict[str, Any]
) -> None:
    token = REQUEST_ID.set(request_id)
    try:
        record = _record(msg, fields, exc)
    finally:
        REQUEST_ID.reset(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert {k: got.get(k) for k in want} == want
    assert got["ts"].endswith("Z") and list(got)[:3] == ["ts", "level", "logger"]
    assert ("error" in got) is exc and ("RuntimeError: boom" in got.get("error", "")) is exc
    assert ("request_id" in got) is (request_id is not None)


# (case, fields, the text line's tail)
TEXT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("plain values", {"job_id": 7, "pool": "h100"}, "job.admit job_id=7 pool=h100"),
    ("values that need quotes", {"why": "exit code 3", "empty": ""}, 'job.admit why="exit code 3" empty=""'),
    ("none and booleans", {"grant_id": None, "backfilled": False}, "job.admit grant_id=null backfilled=false"),
]


@pytest.mark.parametrize(("fields", "tail"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_text_lines(fields: dict[str, Any], tail: str) -> None:
    line = TextFormatter().format(_record("job.admit", fields))
    assert line.endswith(f"kfabric.test WARNING {tail}"), line


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_configure_sends_every_logger_through_one_format(root_logging: None) -> None:
    stream = io.StringIO()
    configure("json", "info", stream, force=True)
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    event(logging.getLogger("kfabric.controller"), "job.end", job_id=3, state="failed")
    logging.getLogger("kfabric.backend").debug("below the level")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("event", line.get("message")) for line in lines] == ["Started server process [1]", "job.end"]
    with pytest.raises(ValueError, match="--log-format"):
        configure("xml")
    assert configure("text", "info") is not None  # its own handler is replaced
    logging.getLogger().addHandler(logging.NullHandler())  # a host (pytest, an embedding program) set logging up
    assert configure("json", "debug") is None and logging.getLogger().level == logging.INFO


def test_serve_takes_log_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--log-format {json,text}" in help_text and "--log-level" in help_text
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--log-format", "xml"])
    assert refused.value.code == 2


# ---- the instrumented backend ------------------------------------------------------------------------------------


@dataclass
class Scripted:
    """A backend whose calls raise what the test says."""

    name: str = "scripted"
    raises: BaseException | None = None
    fenced: list[int] = field(default_factory=list)

    def launch(self, spec: LaunchSpec) -> None:
        if self.raises is not None:
            raise self.raises

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        if self.raises is not None:
            raise self.raises

    def poll(self) -> list[RunReport]:
        if self.raises is not None:
            raise self.raises
        return []

    def fence(self, epoch: int) -> None:
        self.fenced.append(epoch)


# (case, what the backend raises, the outcome counted)
OUTCOMES: list[tuple[str, BaseException | None, str]] = [
    ("ok", None, "ok"),
    ("cluster down", BackendUnavailable("slurmctld unreachable"), "unavailable"),
    ("launch refused", ValueError("no POSIX account"), "refused"),
    ("os error", OSError("disk full"), "refused"),
    ("anything else", RuntimeError("bug"), "error"),
]
SPEC = LaunchSpec("9", 1, "j", "true", (), 60.0)


@pytest.mark.parametrize(("raises", "outcome"), [c[1:] for c in OUTCOMES], ids=[c[0] for c in OUTCOMES])
@pytest.mark.parametrize("call", ["launch", "terminate", "poll"])
def test_calls_are_counted_by_outcome(
    call: str, raises: BaseException | None, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    stats = CallStats()
    backend = InstrumentedBackend(Scripted(raises=raises), stats, "cluster-a")
    do = {"launch": lambda: backend.launch(SPEC), "terminate": lambda: backend.terminate("9", 1, 30.0),
          "poll": backend.poll}[call]  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="kfabric.backend"):
        if raises is None:
            do()
        else:
            with pytest.raises(type(raises)):
                do()
    calls = stats.calls()
    assert calls[("cluster-a", call, outcome)] == 1
    assert sum(calls.values()) == 1 and stats.durations()[("cluster-a", call)].count == 1
    logged = [r for r in caplog.records if r.msg == "backend.call"]
    assert len(logged) == 1 and logged[0].kf_fields["outcome"] == outcome  # type: ignore[attr-defined]
    if call != "poll":
        assert logged[0].kf_fields["job_id"] == "9"  # type: ignore[attr-defined]


def test_other_methods_pass_through_and_are_counted() -> None:
    inner, stats = Scripted(), CallStats()
    backend = InstrumentedBackend(inner, stats)
    backend.fence(4)  # type: ignore[attr-defined]
    assert inner.fenced == [4] and stats.calls()[("scripted", "fence", "ok")] == 1
    assert backend.name == "scripted" and not hasattr(backend, "nodes")


# ---- the controller's decisions ------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    rt: Runtime
    clock: Clock
    op: Actor
    terminations: list[tuple[str, int, float]]

    @property
    def ctl(self) -> Controller:
        return self.rt.controller

    def submit(self, **spec: Any) -> int:
        row, _ = jobs.submit(self.rt.sessions, self.op, "tinyml-llm", {**LOW, **spec}, self.clock())
        return row.id

    def run_for(self, seconds: float, step_s: float = 60.0) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.ctl.tick()
            self.clock.now += step_s
        self.ctl.tick()


class Spy(SimBackend):
    """The sim backend, recording every terminate (job, attempt, grace)."""

    def __init__(self, clock: Clock, calls: list[tuple[str, int, float]]) -> None:
        super().__init__(clock)
        self.calls = calls

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        self.calls.append((job_id, attempt, grace_s))
        super().terminate(job_id, attempt, grace_s)


def _world(db_url: str, grace_s: float = 60.0) -> World:
    clock, calls = Clock(), []
    policy = load_policy("kfabric").with_(grace_s=grace_s)
    rt = open_runtime(db_url, policy, {"sim": Spy(clock, calls)}, fleet="lab", clock=clock)
    with rt.sessions() as s:
        assert rt.bootstrap_token is not None
        op = authenticate(s, rt.bootstrap_token)
    return World(rt, clock, op, calls)


@pytest.fixture
def world(tmp_path: Any) -> Iterator[World]:
    w = _world(f"sqlite:///{tmp_path}/kfabric.db")
    yield w
    w.rt.close()


def _preempt_one(w: World) -> int:
    """Fill the lab fleet with low-priority work past the minimum run time, then submit an urgent job."""
    for _ in range(6):
        w.submit()
    w.run_for(660)
    return w.submit(priority="urgent", runtime_estimate_s=300.0)


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "kfabric.controller"]


def test_one_json_line_per_decision_with_the_job_id(world: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kfabric"):
        urgent = _preempt_one(world)
        failing = world.submit(priority="normal", gpus=1, command="exit 3", runtime_estimate_s=60.0)
        world.run_for(1200)
    lines = _lines(caplog)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line.get("event", ""), []).append(line)
    for name in ("job.admit", "job.start", "job.preempt", "job.requeue", "job.end"):
        assert by_event.get(name), f"no {name} line"
        assert all(isinstance(line["job_id"], int) and line["attempt"] >= 1 for line in by_event[name]), name
    with world.rt.sessions() as s:
        audited = dict(
            s.execute(select(t.AuditEntry.action, func.count()).where(t.AuditEntry.object_type == "job")
                      .group_by(t.AuditEntry.action)).all()
        )  # fmt: skip
    for name in ("job.admit", "job.preempt", "job.requeue", "job.end"):
        assert len(by_event[name]) == audited[name], name  # one line per decision the store holds
    preempt = by_event["job.preempt"][0]
    assert preempt["by_job"] == str(urgent) and preempt["grace_s"] == 60.0
    assert any(e["job_id"] == failing and e["state"] == "failed" and e["exit_code"] == 3 for e in by_event["job.end"])
    assert {e["cause"] for e in by_event["job.requeue"]} == {"preempted"}


def test_decisions_rolled_back_are_not_logged(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.submit()
    apply = Controller._apply

    def apply_then_fail(self: Controller, *args: Any) -> None:
        apply(self, *args)
        raise RuntimeError("the store went away before the commit")

    monkeypatch.setattr(Controller, "_apply", apply_then_fail)
    with caplog.at_level(logging.INFO, logger="kfabric"), pytest.raises(RuntimeError):
        world.ctl.tick()
    assert not [line for line in _lines(caplog) if line.get("event") == "job.admit"]
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="kfabric"):
        world.ctl.tick()
    assert len([line for line in _lines(caplog) if line.get("event") == "job.admit"]) == 1


def test_api_log_lines_carry_the_request_id(world: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="kfabric.api"), TestClient(create_app(world.rt)) as client:
        r = client.get("/v1/jobs/424242", headers={"X-Request-ID": "trace-77", "Authorization": "Bearer kf_nope"})
    assert r.headers["x-request-id"] == "trace-77"
    lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.msg == "http.request"]
    assert lines == [{**lines[0], "request_id": "trace-77", "route": "/v1/jobs/{job_id}", "status": 401}]


# ---- policy in one place: the grace period -------------------------------------------------------------------------


@pytest.mark.parametrize("grace_s", [0.0, 45.0, 600.0])
def test_the_policys_grace_reaches_terminate(tmp_path: Any, grace_s: float) -> None:
    w = _world(f"sqlite:///{tmp_path}/kfabric.db", grace_s=grace_s)
    try:
        _preempt_one(w)
        w.run_for(120)
        assert w.terminations, "a low-priority job was preempted"
        assert {grace for _, _, grace in w.terminations} == {grace_s}
    finally:
        w.rt.close()


def test_a_policy_swapped_at_run_time_sets_the_next_grace(world: World) -> None:
    world.ctl.policy = world.ctl.policy.with_(grace_s=90.0)  # what policy apply (set_policy) does
    assert world.ctl.preempt_grace_s == 90.0
    _preempt_one(world)
    world.run_for(120)
    assert world.terminations and {grace for _, _, grace in world.terminations} == {90.0}
