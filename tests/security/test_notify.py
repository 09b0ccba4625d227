"""Attacks on job notifications: webhooks aimed at the server's own network (loopback, cloud metadata, redirects),
forged or replayed webhook calls, who may read a project's webhook secret, and mail header injection."""

from __future__ import annotations

import email
import json
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController
from api_world import Api, World
from sqlalchemy import select

from kfabric.model.errors import ValidationError
from kfabric.service import jobs, notifications
from kfabric.service.auth import authenticate
from kfabric.service.notifications import NotificationWorker, NotifySettings, SmtpSettings
from kfabric.store import tables as t


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.location = ""


@pytest.fixture
def http_receiver() -> Iterator[tuple[Recorder, int]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.requests.append((dict(self.headers), body))
            self.send_response(rec.status)
            if rec.location:
                self.send_header("Location", rec.location)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec, int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _job_with_webhook(api: Api, url: str) -> int:
    with api.rt.sessions() as s:
        op = authenticate(s, api.operator)
    row, _ = jobs.submit(api.rt.sessions, op, "vision-lab", {"gpus": 1, "time_limit_s": 600.0, "notify_url": url,
                                                              "mail_type": ["BEGIN"]}, api.clock())  # fmt: skip
    api.tick(30.0, times=2)
    return row.id


def _deliver(api: Api, allow: tuple[str, ...] = ()) -> list[t.Notification]:
    NotificationWorker(api.rt.sessions, NotifySettings(allow=allow, timeout_s=30.0), clock=api.clock).run_once()
    with api.rt.sessions() as s:
        return list(s.scalars(select(t.Notification).order_by(t.Notification.id)).all())


# ---- SSRF ---------------------------------------------------------------------------------------------------------
def test_loopback_webhook_is_refused_unless_the_operator_allows_it(
    api: Api, http_receiver: tuple[Recorder, int]
) -> None:
    rec, port = http_receiver
    _job_with_webhook(api, f"http://localhost:{port}/hook")
    (row,) = _deliver(api)
    assert row.status == "pending" and row.attempts == 1
    assert "loopback" in row.last_error and "--notify-allow" in row.last_error
    assert rec.requests == []  # refused before connecting
    api.clock.now += 3600
    (row,) = _deliver(api, allow=("127.0.0.0/8",))
    assert row.status == "delivered" and len(rec.requests) == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::ffff:127.0.0.1]:9/x", "loopback"),
        ("http://0.0.0.0:9/x", "unspecified"),
        ("http://[fe80::1]:9/x", "link-local"),
    ],
)
def test_internal_addresses_are_refused(api: Api, url: str, why: str) -> None:
    _job_with_webhook(api, url)
    (row,) = _deliver(api)
    assert why in row.last_error and row.status == "pending"


def test_redirects_are_not_followed(api: Api, http_receiver: tuple[Recorder, int]) -> None:
    rec, port = http_receiver
    rec.status, rec.location = 302, "http://169.254.169.254/latest/meta-data/"
    _job_with_webhook(api, f"http://127.0.0.1:{port}/hook")
    (row,) = _deliver(api, allow=("127.0.0.1/32",))
    assert len(rec.requests) == 1 and row.status == "pending"
    assert "HTTP 302" in row.last_error and "not followed" in row.last_error


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file:///etc/passwd", "http or https only"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "http or https only"),
        ("http://user:pw@hooks.example.org/x", "credentials"),
        ("http://hooks.example.org/x\r\nX-Evil: 1", "control characters"),
        ("https://" + "a" * 2000 + ".org/", "2000"),
        ("http:///no-host", "no host"),
    ],
)
def test_bad_webhook_urls_are_refused_at_submit(world: World, url: str, problem: str) -> None:
    r = world.api.post("/v1/jobs", world.token("member", "snu-vision"),
                       {"project": "vision-lab", "time_limit_s": 60.0, "notify_url": url})  # fmt: skip
    assert r.status_code == 422, r.text
    assert "notify_url" in r.text and problem in r.text


# ---- the secret and the signature ---------------------------------------------------------------------------------
def test_only_project_admins_read_or_rotate_the_webhook_secret(world: World) -> None:
    path = "/v1/projects/vision-lab/webhook-secret"
    first = world.api.get(path, world.token("org-admin", "snu-vision"))
    assert first.status_code == 200, first.text
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert world.api.get(path, world.api.operator).json()["secret"] == secret  # made once, then kept
    assert world.api.get(path, world.token("member", "snu-vision")).status_code == 403
    assert world.api.post(path + "/rotate", world.token("member", "snu-vision")).status_code == 403
    assert world.api.get(path, world.token("org-admin", "tinyml")).status_code == 404  # not even visible
    assert world.api.get(path, world.token("reviewer")).status_code == 404
    rotated = world.api.post(path + "/rotate", world.token("org-admin", "snu-vision")).json()["secret"]
    assert rotated != secret
    with world.api.rt.sessions() as s:
        entries = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action.like("project.webhook_secret.%"))).all()
        assert [e.action for e in entries] == ["project.webhook_secret.show"] * 2 + ["project.webhook_secret.rotate"]
        assert not any(secret in json.dumps(e.detail) or rotated in json.dumps(e.detail) for e in entries)
    job = world.submit(world.token("member", "snu-vision"), "vision-lab", notify_url="https://hooks.example.org/k")
    shown = world.api.get(f"/v1/jobs/{job}", world.token("member", "snu-vision")).text
    assert rotated not in shown and "whsec_" not in shown


def test_signature_binds_body_and_timestamp_and_old_ones_are_refused() -> None:
    body = b'{"event":"END","job_id":7}'
    sig = notifications.sign("s3cret", 1_000, body)
    assert notifications.verify("s3cret", "1000", body, sig, now_s=1_010)
    assert not notifications.verify("s3cret", "1000", body.replace(b"END", b"BEGIN"), sig, now_s=1_010)
    assert not notifications.verify("s3cret", "1001", body, sig, now_s=1_010)  # the timestamp is signed
    assert not notifications.verify("other", "1000", body, sig, now_s=1_010)
    assert not notifications.verify("s3cret", "1000", body, sig, now_s=1_000 + 3600)  # a replay an hour later


def test_webhooks_are_signed_with_the_current_secret(api: Api, http_receiver: tuple[Recorder, int]) -> None:
    rec, port = http_receiver
    with api.rt.sessions.begin() as s:
        pid = s.scalar(select(t.Project.id).where(t.Project.name == "vision-lab"))
        assert pid is not None
        old = notifications.webhook_secret(s, pid)
        new = notifications.webhook_secret(s, pid, rotate=True)
    _job_with_webhook(api, f"http://127.0.0.1:{port}/hook")
    (row,) = _deliver(api, allow=("127.0.0.1",))
    assert row.status == "delivered"
    headers, body = rec.requests[0]
    stamp, sig = headers["X-Kfabric-Timestamp"], headers["X-Kfabric-Signature"]
    assert notifications.verify(new, stamp, body, sig, api.clock())
    assert not notifications.verify(old, stamp, body, sig, api.clock())


# ---- mail ---------------------------------------------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


def test_job_name_cannot_inject_mail_headers(api: Api) -> None:
    sink = Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    smtp = SmtpController(sink, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        with api.rt.sessions() as s:
            op = authenticate(s, api.operator)
        spec = {"gpus": 1, "time_limit_s": 600.0, "name": "x\r\nBcc: victim@evil.example\r\nSubject: hi",
                "mail_type": ["BEGIN"], "mail_user": "kim@univ.example"}  # fmt: skip
        jobs.submit(api.rt.sessions, op, "vision-lab", spec, api.clock())
        api.tick(30.0, times=2)
        settings = NotifySettings(smtp=SmtpSettings("127.0.0.1", port, "kfabric@test.example"))
        assert NotificationWorker(api.rt.sessions, settings, clock=api.clock).run_once() == 1
    finally:
        smtp.stop()
    ((rcpts, msg),) = sink.messages
    assert rcpts == ["kim@univ.example"]
    assert msg["Bcc"] is None and len(msg.get_all("Subject") or []) == 1
    assert sorted(k.lower() for k in msg) == sorted(
        ["from", "to", "subject", "x-kfabric-delivery", "content-type", "content-transfer-encoding", "mime-version"]
    )  # the name stays inside the (folded) subject: no header of its own


@pytest.mark.parametrize(
    "field_value",
    [{"mail_user": "kim@univ.example\r\nBcc: x@y.z"}, {"mail_user": "a@b.c, d@e.f"}, {"mail_type": ["BEGN"]}],
)
def test_bad_mail_fields_are_refused(field_value: dict[str, Any]) -> None:
    from kfabric.api.schemas import JobCreate

    with pytest.raises(ValueError, match=r"mail_user|mail_type|did you mean BEGIN"):
        JobCreate.model_validate({"project": "p", "time_limit_s": 60.0, "mail_user": "kim@univ.example", **field_value})
    with pytest.raises(ValidationError):
        notifications.check_spec({"mail_user": "a@b.c, d@e.f"})
