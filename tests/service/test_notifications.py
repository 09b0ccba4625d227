"""Job notifications end to end on the sim backend: mail through a local SMTP sink (aiosmtpd), webhooks to a local
HTTP receiver that checks the signature; rows written with the state change, retried with back-off, never sent
twice after a restart, and a hanging receiver never holds up the controller's cycle."""

from __future__ import annotations

import email
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController
from sqlalchemy import func, select

from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs, notifications
from kfabric.service.actors import Actor
from kfabric.service.auth import authenticate
from kfabric.service.notifications import NotificationWorker, NotifySettings, SmtpSettings
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
PROJECT = "vision-lab"


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


# ---- a local SMTP sink and a local HTTP receiver ------------------------------------------------------------------
class Sink:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.rcpts: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    server = SmtpController(sink, hostname="127.0.0.1", port=port)
    server.start()
    yield sink, port
    server.stop()


@dataclass
class Receiver:
    """What the HTTP receiver got and how it answers: ``fail`` first requests get 503, ``hang`` holds each request
    until released, ``redirect`` answers 302."""

    secret: str = ""
    fail: int = 0
    redirect: str = ""
    hang: threading.Event | None = None
    got: list[dict[str, Any]] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)
    requests: int = 0
    entered: threading.Event = field(default_factory=threading.Event)
    clock: Clock = field(default_factory=Clock)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests += 1
            state.entered.set()
            if state.hang is not None:
                state.hang.wait(30)
            if state.requests <= state.fail:
                self.send_response(503)
                self.end_headers()
                return
            if state.redirect:
                self.send_response(302)
                self.send_header("Location", state.redirect)
                self.end_headers()
                return
            ok = notifications.verify(
                state.secret, self.headers.get("X-Kfabric-Timestamp", ""), body,
                self.headers.get("X-Kfabric-Signature", ""), state.clock(),
            )  # fmt: skip
            state.verified.append(ok)
            state.got.append({"event": self.headers.get("X-Kfabric-Event"), **json.loads(body)})
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    if state.hang is not None:
        state.hang.set()
    server.shutdown()
    server.server_close()


# ---- the world --------------------------------------------------------------------------------------------------
@dataclass
class World:
    rt: Runtime
    clock: Clock
    sim: SimBackend
    op: Actor

    def submit(self, **spec: object) -> int:
        spec = {"gpus": 1, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, PROJECT, spec, self.clock())
        return row.id

    def run_for(self, seconds: float, step_s: float = 30.0) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.rt.controller.tick()
            self.clock.now += step_s
        self.rt.controller.tick()

    def rows(self, job_id: int | None = None) -> list[t.Notification]:
        with self.rt.sessions() as s:
            q = select(t.Notification).order_by(t.Notification.id)
            if job_id is not None:
                q = q.where(t.Notification.job_id == job_id)
            return list(s.scalars(q).all())

    def secret(self) -> str:
        with self.rt.sessions.begin() as s:
            pid = s.scalar(select(t.Project.id).where(t.Project.name == PROJECT))
            assert pid is not None
            return notifications.webhook_secret(s, pid)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    clock = Clock()
    sim = SimBackend(clock)
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=clock)
    with rt.sessions() as s:
        assert rt.bootstrap_token is not None
        op = authenticate(s, rt.bootstrap_token)
    yield World(rt, clock, sim, op)
    rt.close()


def worker(w: World, smtp_port: int | None = None, **kw: Any) -> NotificationWorker:
    smtp = SmtpSettings("127.0.0.1", smtp_port, "kfabric@test.example") if smtp_port else None
    settings = NotifySettings(smtp=smtp, allow=("127.0.0.0/8",), timeout_s=kw.pop("timeout_s", 30.0), **kw)
    return NotificationWorker(w.rt.sessions, settings, clock=w.clock)


# ---- tests ------------------------------------------------------------------------------------------------------
def test_mail_and_signed_webhook_for_begin_and_end(
    world: World, smtp: tuple[Sink, int], receiver: tuple[Receiver, str]
) -> None:
    sink, port = smtp
    recv, url = receiver
    recv.secret, recv.clock = world.secret(), world.clock
    ok = world.submit(name="train", mail_type=["ALL"], mail_user="kim@univ.example", notify_url=url)
    bad = world.submit(name="broken", command="exit 3", mail_type=["END", "FAIL"], mail_user="kim@univ.example")
    world.run_for(900)
    rows = world.rows()
    assert sorted((r.job_id, r.channel, r.event) for r in rows) == sorted([
        (ok, "mail", "BEGIN"), (ok, "webhook", "BEGIN"), (bad, "mail", "FAIL"), (ok, "mail", "END"),
        (ok, "webhook", "END"),
    ])  # fmt: skip
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)  # the cycle only wrote them

    w = worker(world, port)
    assert w.run_once() == 3  # BEGIN of each channel and the FAIL; a job's END waits for its BEGIN (in order)
    assert w.run_once() == 2
    subjects = sorted(str(m["Subject"]) for m in sink.messages)
    assert subjects == sorted([
        f"kfabric Job_id={bad} Name=broken Failed, FAILED",
        f"kfabric Job_id={ok} Name=train Began, RUNNING",
        f"kfabric Job_id={ok} Name=train Ended, SUCCEEDED",
    ])  # fmt: skip
    assert all(r == ["kim@univ.example"] for r in sink.rcpts)
    failed_mail = next(m for m in sink.messages if "Failed" in str(m["Subject"]))
    assert "exit_code: 3" in failed_mail.get_payload()  # the end's exit code, written after the state change
    assert recv.verified == [True, True]
    assert [(g["event"], g["job_id"], g["state"], g["project"]) for g in recv.got] == [
        ("BEGIN", ok, "running", PROJECT),
        ("END", ok, "succeeded", PROJECT),
    ]
    assert {r.status for r in world.rows()} == {"delivered"}


def test_requeue_event_after_a_lost_attempt(world: World, receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    recv.secret, recv.clock = world.secret(), world.clock
    jid = world.submit(runtime_estimate_s=1200.0, notify_url=url, mail_type=["REQUEUE"])
    world.run_for(60)
    row_placement = None
    with world.rt.sessions() as s:
        job = s.get(t.Job, jid)
        assert job is not None and job.state == "running"
        row_placement = job.placement
    assert row_placement is not None
    world.sim.fail_node(world.rt.controller.node_names[row_placement["shares"][0][0]])
    world.run_for(120)
    assert [r.event for r in world.rows(jid)] == ["REQUEUE"]
    worker(world).run_once()
    assert [g["event"] for g in recv.got] == ["REQUEUE"] and recv.verified == [True]


def test_retries_with_backoff_then_delivers_once(world: World, receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    recv.secret, recv.clock = world.secret(), world.clock
    recv.fail = 2  # 503 twice, then accepted
    jid = world.submit(notify_url=url, mail_type=["BEGIN"])
    world.run_for(60)
    w = worker(world, backoff_s=10.0)
    assert w.run_once() == 0
    (row,) = world.rows(jid)
    assert (row.status, row.attempts, row.next_attempt_s) == ("pending", 1, world.clock.now + 10.0)
    assert "HTTP 503" in row.last_error
    assert w.run_once() == 0  # not due yet: nothing sent
    assert recv.requests == 1
    world.clock.now += 10.0
    assert w.run_once() == 0
    (row,) = world.rows(jid)
    assert (row.attempts, row.next_attempt_s) == (2, world.clock.now + 20.0)  # doubled
    world.clock.now += 20.0
    assert w.run_once() == 1
    (row,) = world.rows(jid)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, "")
    world.clock.now += 3600.0
    assert worker(world).run_once() == 0  # a restarted worker finds nothing to send
    assert recv.requests == 3 and len(recv.got) == 1


def test_gives_up_after_max_attempts(world: World) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"  # nothing listens there
    jid = world.submit(notify_url=dead, mail_type=["BEGIN"])
    world.run_for(60)
    w = worker(world, max_attempts=3, backoff_s=1.0)
    for _ in range(5):
        w.run_once()
        world.clock.now += 100.0
    (row,) = world.rows(jid)
    assert (row.status, row.attempts) == ("failed", 3)
    assert "ConnectionRefused" in row.last_error


def test_no_duplicates_after_a_controller_restart(world: World, db_url: str, receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    recv.secret, recv.clock = world.secret(), world.clock
    jid = world.submit(notify_url=url, mail_type=["BEGIN", "END"])
    world.run_for(60)
    assert worker(world).run_once() == 1
    world.rt.close()
    # a new controller on the same store: it rebuilds its state, reconciles, sees the job run and end
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": world.sim}, fleet="lab", clock=world.clock)
    again = World(rt, world.clock, world.sim, world.op)
    again.run_for(900)
    events = [(r.event, r.status) for r in again.rows(jid)]
    assert events == [("BEGIN", "delivered"), ("END", "pending")]
    assert worker(again).run_once() == 1
    assert [g["event"] for g in recv.got] == ["BEGIN", "END"]
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(t.Notification)) == 2
    world.rt = rt  # closed by the fixture


def test_hanging_receiver_never_blocks_the_cycle(world: World, receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    recv.hang = threading.Event()
    first = world.submit(notify_url=url, mail_type=["BEGIN"])
    world.run_for(60)
    w = worker(world, timeout_s=1.0)
    w.interval_s = 0.05
    w.start()
    try:
        assert recv.entered.wait(10)  # the worker is inside a POST the receiver holds
        second = world.submit(runtime_estimate_s=60.0, notify_url=url, mail_type=["END"])
        world.run_for(300)  # ticks go on meanwhile
        with world.rt.sessions() as s:
            done = s.get(t.Job, second)
            assert done is not None and done.state == "succeeded"
    finally:
        w.stop()
        recv.hang.set()
    rows = {r.job_id: r for r in world.rows()}
    assert rows[second].event == "END"
    assert rows[first].attempts >= 1 and "timed out" in rows[first].last_error.lower()
