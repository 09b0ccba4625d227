"""Job notifications: mail (``--mail-type BEGIN,END,FAIL,REQUEUE,ALL --mail-user ADDR``) and signed webhooks
(``--notify URL``), written with the job's state change and delivered by a worker thread, with retries.

**Written once, with the change.** :func:`enqueue` runs inside :func:`kfabric.service.jobs.transition`, in the
transaction that writes the job's state change and its ``JobEvent``: a ``notifications`` row (status ``pending``)
per channel and event. The change and its notifications commit together or not at all, so none is lost and a
controller that restarts never writes one twice.

**Delivered apart.** :class:`NotificationWorker` (a thread of ``kfabric serve``, acting only while its server
leads) picks due rows, claims each with a conditional update (two workers never send the same row at once) and
delivers it outside any transaction: mail through the configured SMTP server (``--smtp HOST:PORT``), webhooks by
HTTP POST. A failure is retried with exponential back-off (``BACKOFF_S`` doubling up to ``BACKOFF_MAX_S``); after
``max_attempts`` the row is ``failed`` and logged. The controller's cycle never waits for a delivery: every network
call has a timeout and runs on the worker's own threads. Delivery is at least once: a worker killed between the
receiver's answer and recording it sends that one again after a restart, with the same ``X-Kfabric-Delivery`` id.

Events (as Slurm's mail types): ``BEGIN`` (the job starts running), ``END`` (it ends: succeeded, failed, cancelled,
timeout), ``FAIL`` (it ends failed or timed out; sent instead of ``END`` when both are asked), ``REQUEUE`` (it is
put back in the queue after it was preempted or lost). ``ALL`` is all four. Webhooks get the events of
``--mail-type`` when it is given, all four otherwise.

**Webhook signature.** Every POST carries ``X-Kfabric-Timestamp: T`` (epoch seconds) and
``X-Kfabric-Signature: sha256=HEX``, HEX = HMAC-SHA256(project's webhook secret, ``T + "." + body``). A receiver
recomputes it over the raw body, compares in constant time and refuses a timestamp older than a few minutes
(replay). The secret is made on first use and shown to the project's admins (``kfabric project webhook-secret``).

**Where webhooks may go.** ``http``/``https`` only, no credentials in the URL, no redirects followed. The host is
resolved at delivery and every address checked: loopback, link-local (cloud metadata at 169.254.169.254),
unspecified, multicast and reserved addresses are refused unless the operator allows them (``--notify-allow
CIDR|HOST``); the connection goes to the checked address (no second lookup that DNS rebinding could change).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import secrets
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import ValidationError
from kfabric.model.suggest import did_you_mean
from kfabric.store import tables as t

log = logging.getLogger("kfabric.notifications")

EVENTS = ("BEGIN", "END", "FAIL", "REQUEUE")
#: what ``--mail-type`` accepts (Slurm's names kfabric serves; NONE: no mail)
MAIL_TYPES = (*EVENTS, "ALL", "NONE")
FAILED_STATES = frozenset({"failed", "timeout"})
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timeout"})
MAX_URL = 2000
MAX_ADDRESS = 254
SIGNATURE_HEADER = "X-Kfabric-Signature"
TIMESTAMP_HEADER = "X-Kfabric-Timestamp"
BACKOFF_S = 5.0
BACKOFF_MAX_S = 600.0
MAX_ATTEMPTS = 8
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")  # fmt: skip
#: addresses a webhook never reaches unless allowed (``--notify-allow``); IPv4-mapped IPv6 is checked as IPv4
_METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"))


# ---- validation (submit time) ------------------------------------------------------------------------------------
def mail_types(values: Iterable[str], where: str = "job.mail_type") -> list[str]:
    """``["BEGIN,END", "fail"]`` → ``["BEGIN", "END", "FAIL"]``; ``ALL`` expands; ``NONE`` alone means none.
    Unknown names are a :class:`ValidationError` with the closest known name."""
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            name = part.strip().upper()
            if not name:
                continue
            if name not in MAIL_TYPES:
                raise ValidationError(
                    where, f"unknown mail type {part.strip()!r}{did_you_mean(name, MAIL_TYPES)}",
                    f"use any of {', '.join(MAIL_TYPES)}",
                )  # fmt: skip
            for event in EVENTS if name == "ALL" else () if name == "NONE" else (name,):
                if event not in out:
                    out.append(event)
    return out


def check_mail_user(value: str, where: str = "job.mail_user") -> str:
    """One mail address (``name@host.example``), at most 254 characters, no spaces, commas or line breaks."""
    if len(value) > MAX_ADDRESS or not _ADDRESS.match(value):
        raise ValidationError(where, f"{value[:80]!r} is not a mail address", "give one address, e.g. kim@univ.ac.kr")
    return value


def check_notify_url(value: str, where: str = "job.notify_url") -> str:
    """An ``http``/``https`` URL with a host, no credentials, no fragment, at most 2000 characters. Where it may
    point (addresses) is checked at delivery, against the operator's allow-list."""
    fix = "give an http(s) URL such as https://hooks.example.org/kfabric"
    if len(value) > MAX_URL or any(ord(ch) < 33 or ord(ch) == 127 for ch in value):
        raise ValidationError(where, "must be at most 2000 characters without spaces or control characters", fix)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(where, f"not a URL: {exc}", fix) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(where, f"scheme {parts.scheme or '(none)'!r} is not allowed: http or https only", fix)
    if not parts.hostname:
        raise ValidationError(where, "has no host", fix)
    if parts.username is not None or parts.password is not None:
        raise ValidationError(where, "must not carry credentials (user:password@)", "receivers check the signature")
    if parts.fragment:
        raise ValidationError(where, "must not have a #fragment", fix)
    if port == 0:
        raise ValidationError(where, "port 0 is not a port", fix)
    return value


def check_spec(spec: dict[str, Any]) -> None:
    """The notification fields of a job spec, together: a mail type needs a mail user."""
    types = mail_types(spec.get("mail_type") or [])
    user = str(spec.get("mail_user") or "")
    if user:
        check_mail_user(user)
    if types and not user and not spec.get("notify_url"):
        raise ValidationError(
            "job.mail_user", "is required with --mail-type (kfabric keeps no mail address for its users)",
            "add --mail-user ADDR, or --notify URL for a webhook",
        )  # fmt: skip
    if spec.get("notify_url"):
        check_notify_url(str(spec["notify_url"]))


# ---- enqueue (in the state change's transaction) ---------------------------------------------------------------
def events_of(from_state: str, to_state: str) -> list[str]:
    """The events a state change is (before the job's selection): at most one of END/FAIL per end."""
    if to_state == "running" and from_state != "running":
        return ["BEGIN"]
    if to_state in FINAL_STATES:
        return ["FAIL", "END"] if to_state in FAILED_STATES else ["END"]
    if to_state == "pending" and from_state == "preempted":
        return ["REQUEUE"]
    return []


def enqueue(session: Session, row: t.Job, to_state: str, now_s: float, reason: str) -> int:
    """Write the notifications a job's state change ``row.state → to_state`` asks for (called before the row's
    state is updated, in the caller's transaction); how many were written."""
    spec = row.spec or {}
    url, user = str(spec.get("notify_url") or ""), str(spec.get("mail_user") or "")
    if not url and not user:
        return 0
    candidates = events_of(str(row.state), to_state)
    if not candidates:
        return 0
    try:
        chosen = mail_types(spec.get("mail_type") or [])
    except ValidationError:
        chosen = []
    payload = {
        "job_id": row.id, "name": row.name, "attempt": row.attempt, "from_state": row.state, "state": to_state,
        "reason": reason, "at_s": now_s,
    }  # fmt: skip
    written = 0
    for channel, target, selection in (("mail", user, chosen), ("webhook", url, chosen or list(EVENTS))):
        event = next((e for e in candidates if e in selection), None)
        if not target or event is None:
            continue
        session.add(
            t.Notification(
                job_id=row.id, channel=channel, target=target, event=event, payload={**payload, "event": event},
                status="pending", attempts=0, next_attempt_s=now_s, last_error="", created_at_s=now_s,
            )
        )  # fmt: skip
        written += 1
    return written


# ---- the project's webhook secret --------------------------------------------------------------------------------
def webhook_secret(session: Session, project_id: int, rotate: bool = False) -> str:
    """The project's webhook secret, made on first use (or replaced with ``rotate``), in the caller's transaction.
    A concurrent first use by another server is settled by a conditional update: both end with the same secret."""
    project = session.get(t.Project, project_id)
    if project is None:
        raise ValidationError("project", f"no project #{project_id}")
    if project.webhook_secret and not rotate:
        return project.webhook_secret
    new = "whsec_" + secrets.token_hex(32)
    cond = t.Project.id == project_id
    if not rotate:
        cond = cond & (t.Project.webhook_secret == "")
    session.execute(update(t.Project).where(cond).values(webhook_secret=new))
    session.refresh(project)
    return project.webhook_secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Kfabric-Signature`` value: ``sha256=`` HMAC-SHA256(secret, ``TIMESTAMP.BODY``) in hex."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now_s: float, tolerance_s: float = 300) -> bool:
    """What a receiver does (and the tests do): the signature matches and the timestamp is recent."""
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


# ---- delivery ----------------------------------------------------------------------------------------------------
class Undeliverable(Exception):
    """This attempt failed (the message says why); it is retried until ``max_attempts``."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "kfabric@localhost"
    starttls: bool = False
    user: str = ""
    password: str = ""

    @classmethod
    def parse(cls, text: str, sender: str = "", **kw: Any) -> SmtpSettings:
        """``HOST:PORT`` (or ``HOST``, port 25) → settings; a :class:`ValidationError` naming ``--smtp``."""
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "25")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValidationError("--smtp", f"{text!r} is not HOST:PORT", "e.g. --smtp mail.example.org:25")
        if sender:
            check_mail_user(sender, "--smtp-from")
        return cls(host.strip("[]"), int(port), sender or f"kfabric@{socket.gethostname()}", **kw)


@dataclass(frozen=True)
class NotifySettings:
    smtp: SmtpSettings | None = None
    #: networks and host names webhooks may reach although they are loopback, link-local, ... (``--notify-allow``)
    allow: tuple[str, ...] = ()
    timeout_s: float = 10.0
    max_attempts: int = MAX_ATTEMPTS
    backoff_s: float = BACKOFF_S
    backoff_max_s: float = BACKOFF_MAX_S
    #: deliveries in flight at once
    workers: int = 4
    #: rows picked per round
    batch: int = 100
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, default=())
    hosts: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        nets, hosts = [], set()
        for entry in self.allow:
            text = entry.strip()
            if not text:
                continue
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if not re.match(r"^[A-Za-z0-9.-]+$", text):
                    raise ValidationError(
                        "--notify-allow", f"{text!r} is neither a network (CIDR) nor a host name",
                        "e.g. --notify-allow 127.0.0.0/8 or --notify-allow hooks.internal",
                    ) from None  # fmt: skip
                hosts.add(text.lower().rstrip("."))
        object.__setattr__(self, "networks", tuple(nets))
        object.__setattr__(self, "hosts", frozenset(hosts))

    def backoff(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempts - 1)))


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why a webhook may not reach ``ip`` by default ("" when it may)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _METADATA):
        return "a cloud metadata address"
    for name in ("loopback", "link_local", "unspecified", "multicast", "reserved"):
        if getattr(ip, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    return ""


def resolve_target(url: str, settings: NotifySettings) -> tuple[str, int, str]:
    """``(host, port, address)`` to connect to for ``url``: the first resolved address; :class:`Undeliverable` if
    any resolved address is refused (a name resolving to a public and a loopback address is refused whole)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Undeliverable(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Undeliverable(f"{host} has no address")
    if host not in settings.hosts:
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%")[0])
            why = blocked_reason(ip)
            if why and not any(ip in net for net in settings.networks):
                raise Undeliverable(
                    f"refused: {host} resolves to {text}, {why}; an operator may allow it with "
                    f"kfabric serve --notify-allow {ip}/{ip.max_prefixlen}"
                )
    return host, port, addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to a checked address, sends the URL's host name (no second DNS lookup)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post_webhook(url: str, body: bytes, headers: dict[str, str], settings: NotifySettings) -> int:
    """POST ``body``; the status (2xx) or :class:`Undeliverable`. Redirects are not followed."""
    host, port, address = resolve_target(url, settings)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = kind(host, port, address, settings.timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        raise Undeliverable(f"POST {host}:{port}: {type(exc).__name__}: {exc or 'no answer'}") from None
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        where = (
            f" (to {response.getheader('Location', '')[:200]}: not followed)" if 300 <= response.status < 400 else ""
        )
        raise Undeliverable(f"POST {host}:{port}: HTTP {response.status}{where}")
    return response.status


def _clean(text: object, limit: int = 200) -> str:
    """One line of printable text (job names go into mail subjects: no header injection)."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))[:limit]


def mail_message(n: Notifiable, sender: str) -> EmailMessage:
    p = n.payload
    verb = {"BEGIN": "Began", "END": "Ended", "FAIL": "Failed", "REQUEUE": "Requeued"}[n.event]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = n.target
    msg["Subject"] = _clean(f"kfabric Job_id={p.get('job_id')} Name={p.get('name') or '-'} {verb}, "
                            f"{str(p.get('state', '')).upper()}")  # fmt: skip
    msg["X-Kfabric-Delivery"] = str(n.id)
    lines = [f"{key}: {_clean(value, 2000)}" for key, value in p.items()]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send_mail(n: Notifiable, smtp: SmtpSettings | None, timeout_s: float) -> None:
    if smtp is None:
        raise Undeliverable("no SMTP server configured (kfabric serve --smtp HOST:PORT)")
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.user:
                client.login(smtp.user, smtp.password)
            client.send_message(mail_message(n, smtp.sender))
    except (OSError, smtplib.SMTPException) as exc:
        raise Undeliverable(f"SMTP {smtp.host}:{smtp.port}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Notifiable:
    """One claimed row, detached from its session."""

    id: int
    job_id: int
    channel: str
    target: str
    event: str
    payload: dict[str, Any]
    attempts: int
    project_id: int


class NotificationWorker:
    """Delivers due notifications (see the module docstring). ``leading`` says whether this server acts (a
    standby's worker waits); :meth:`run_once` is one round (tests call it; the thread calls it in a loop)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: NotifySettings,
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.leading = leading
        self.clock = clock
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="kfabric-notify")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kfabric-notifications", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.leading():
                    self.run_once()
            except Exception:  # the store may be away for a moment; the rows wait
                log.warning("notification round failed", exc_info=True)
            self._stop.wait(self.interval_s)

    def run_once(self) -> int:
        """Deliver what is due now; how many were delivered."""
        claimed = self._claim(self.clock())
        outcomes = list(self._pool.map(self._deliver, claimed))
        return sum(1 for ok in outcomes if ok)

    def _claim(self, now: float) -> list[Notifiable]:
        """Due rows, each claimed by moving its next attempt past the longest a delivery may take (a worker that
        dies mid-delivery leaves the row due again then)."""
        hold = now + 3 * self.settings.timeout_s + 30
        out: list[Notifiable] = []
        with self.sessions.begin() as s:
            rows = s.execute(
                select(t.Notification, t.Job.project_id)
                .join(t.Job, t.Job.id == t.Notification.job_id)
                .where(t.Notification.status == "pending", t.Notification.next_attempt_s <= now)
                .order_by(t.Notification.next_attempt_s, t.Notification.id)
                .limit(self.settings.batch)
            ).all()
            for n, project_id in rows:
                first = s.scalar(
                    select(func.min(t.Notification.id)).where(
                        t.Notification.job_id == n.job_id, t.Notification.channel == n.channel,
                        t.Notification.status == "pending",
                    )
                )  # fmt: skip
                if first != n.id:
                    continue  # an earlier one of this job and channel waits (back-off): events go out in order
                result = s.execute(
                    update(t.Notification)
                    .where(t.Notification.id == n.id, t.Notification.status == "pending",
                           t.Notification.next_attempt_s == n.next_attempt_s)
                    .values(next_attempt_s=hold)
                )  # fmt: skip
                got = getattr(result, "rowcount", 0)
                if got == 1:
                    out.append(Notifiable(n.id, n.job_id, n.channel, n.target, n.event, dict(n.payload or {}),
                                          n.attempts, project_id))  # fmt: skip
        return out

    def _deliver(self, n: Notifiable) -> bool:
        try:
            payload = self._complete(n)
            if n.channel == "mail":
                send_mail(payload, self.settings.smtp, self.settings.timeout_s)
            elif n.channel == "webhook":
                self._post(payload)
            else:
                raise Undeliverable(f"unknown channel {n.channel!r}")
        except Undeliverable as exc:
            self._record(n, str(exc))
            return False
        except Exception as exc:  # a bug must not stop the worker: the row is retried
            log.exception("notification %s: delivery failed", n.id)
            self._record(n, f"{type(exc).__name__}: {exc}")
            return False
        self._record(n, None)
        return True

    def _complete(self, n: Notifiable) -> Notifiable:
        """The payload with what the job's row says now: project, user, exit code and times (the end's exit code
        is written after the state change that queued the row, in the same transaction)."""
        with self.sessions() as s:
            job = s.get(t.Job, n.job_id)
            project = s.get(t.Project, n.project_id)
            user = s.get(t.User, job.user_id) if job is not None else None
            extra: dict[str, Any] = {"project": project.name if project else None, "user": user.name if user else None}
            if job is not None:
                extra |= {"submitted_at_s": job.submitted_at_s, "started_at_s": job.started_at_s}
                if n.event in ("END", "FAIL"):
                    extra |= {"exit_code": job.exit_code, "ended_at_s": job.ended_at_s}
        payload = {**n.payload, **extra, "delivery": n.id}
        return Notifiable(n.id, n.job_id, n.channel, n.target, n.event, payload, n.attempts, n.project_id)

    def _post(self, n: Notifiable) -> None:
        with self.sessions.begin() as s:
            secret = webhook_secret(s, n.project_id)
        body = json.dumps(n.payload, sort_keys=True, separators=(",", ":")).encode()
        stamp = int(self.clock())
        headers = {
            TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign(secret, stamp, body),
            "X-Kfabric-Event": n.event, "X-Kfabric-Delivery": str(n.id), "User-Agent": "kfabric-notify/1",
        }  # fmt: skip
        post_webhook(n.target, body, headers, self.settings)

    def _record(self, n: Notifiable, error: str | None) -> None:
        now = self.clock()
        attempts = n.attempts + 1
        values: dict[str, Any] = {"attempts": attempts}
        if error is None:
            values |= {"status": "delivered", "delivered_at_s": now, "last_error": ""}
        elif attempts >= self.settings.max_attempts:
            values |= {"status": "failed", "last_error": error[:2000]}
            log.warning("notification %s (%s %s of job %s to %s) failed for good after %d attempts: %s", n.id,
                        n.channel, n.event, n.job_id, n.target, attempts, error)  # fmt: skip
        else:
            values |= {"next_attempt_s": now + self.settings.backoff(attempts), "last_error": error[:2000]}
            log.info("notification %s: attempt %d failed (%s); retry in %.0f s", n.id, attempts, error,
                     self.settings.backoff(attempts))  # fmt: skip
        with contextlib.suppress(Exception), self.sessions.begin() as s:
            s.execute(update(t.Notification).where(t.Notification.id == n.id).values(**values))


def settings_of(
    smtp: str | None, smtp_from: str = "", starttls: bool = False, smtp_user: str = "", smtp_password: str = "",
    allow: Sequence[str] = (), max_attempts: int = MAX_ATTEMPTS, timeout_s: float = 10.0,
) -> NotifySettings:  # fmt: skip
    """The settings of ``kfabric serve``'s options (``--smtp``, ``--smtp-from``, ``--notify-allow``, ...)."""
    if max_attempts < 1:
        raise ValidationError("--notify-attempts", f"must be >= 1, got {max_attempts}")
    if not timeout_s > 0:
        raise ValidationError("--notify-timeout", f"must be > 0 seconds, got {timeout_s}")
    server = (
        SmtpSettings.parse(smtp, smtp_from, starttls=starttls, user=smtp_user, password=smtp_password) if smtp else None
    )
    entries = [part for item in allow for part in item.split(",")]
    return NotifySettings(smtp=server, allow=tuple(entries), max_attempts=max_attempts, timeout_s=timeout_s)
