"""One leader among many servers: the ``controller`` lease, fencing, and the servers' heartbeats.

Every ``kfabric serve`` sharing a store answers the API; exactly one runs the controller loop, the holder of the
``controller`` row of ``leases``. :meth:`Leadership.renew` acquires or renews it in one transaction that locks the
row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serializes writers anyway):

* held by this server and not expired: renewed (``expires_at_s = now + ttl``), same epoch;
* free, expired, or ``exclusive`` (the SQLite single-server lock proves nobody else runs): taken, epoch + 1;
* held by another server and not expired: this server is a standby.

Time: ``expires_at_s`` is on the servers' wall clocks (``clock``), which must agree (NTP) within a fraction of
the TTL (the margin, default 20 % of it, at most 2 s). Each server also keeps a local deadline on its monotonic
clock (``monotonic``): the monotonic time at which the renewing transaction began + ttl - margin. A process that
was paused (SIGSTOP, a long GC, a frozen VM) finds on waking that its deadline passed, before it talks to the
store or a backend.

Fencing (:meth:`Leadership.check`): every write transaction the controller makes for a decision first reads the
lease row ``FOR SHARE`` and raises :class:`NotLeader` unless it still names this server and the controller's epoch
and the local deadline holds. A takeover's ``FOR UPDATE`` waits for such a transaction to commit; a transaction
that starts after the takeover committed sees the new epoch: a stale leader's write never commits.
:meth:`Leadership.require` is the same check without the store, before each backend call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, ValidationError
from kfabric.store import tables as t

log = logging.getLogger("kfabric.leadership")

LEASE = "controller"
LEADER, STANDBY = "leader", "standby"


class NotLeader(Conflict):
    """This server does not hold the controller lease (any more): the decision is abandoned, nothing of it was
    written, and the server follows as a standby."""

    def __init__(self, server_id: str, problem: str) -> None:
        super().__init__(
            f"server {server_id}",
            f"not the leader: {problem}",
            "nothing to do: the leader (kfabric status) acts; this server takes over by itself if the leader stops",
        )


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """``ttl_s``: how long a lease lasts without renewal (takeover comes within ttl + one renew interval);
    ``renew_s``: how often every server renews (leader) or tries (standbys) and heartbeats (default ttl / 3);
    ``margin_s``: how much before the lease's end a leader stops acting (clock skew + one backend call; default
    20 % of the TTL, at most 2 s); ``stale_after_s``: a server not heard from for this long is shown stale
    (default 3 renew intervals); ``prune_after_s``: then removed from ``servers`` by the leader."""

    ttl_s: float = 10.0
    renew_s: float = 0.0
    margin_s: float = -1.0
    stale_after_s: float = 0.0
    prune_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValidationError("--lease-ttl", f"must be > 0 seconds, got {self.ttl_s}", "e.g. --lease-ttl 10")
        if not self.renew_s:
            object.__setattr__(self, "renew_s", self.ttl_s / 3)
        if self.margin_s < 0:
            object.__setattr__(self, "margin_s", min(2.0, self.ttl_s * 0.2))
        if not self.stale_after_s:
            object.__setattr__(self, "stale_after_s", 3 * self.renew_s)
        if not 0 < self.renew_s <= self.ttl_s / 2:
            raise ValidationError(
                "--lease-renew",
                f"must be > 0 and at most half the TTL ({self.ttl_s / 2:g} s), got {self.renew_s:g}",
                "renew at least twice per TTL, e.g. --lease-renew 3 with --lease-ttl 10",
            )
        if not self.margin_s + self.renew_s < self.ttl_s:
            raise ValidationError(
                "lease margin", f"margin {self.margin_s:g} s + renew {self.renew_s:g} s must be < ttl {self.ttl_s:g} s"
            )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Who this process is, in ``servers`` and ``leases.holder``."""

    id: str
    host: str
    pid: int
    url: str
    started_at_s: float

    @classmethod
    def this_process(cls, url: str, started_at_s: float) -> ServerInfo:
        return cls(f"srv-{secrets.token_hex(4)}", socket.gethostname(), os.getpid(), url, started_at_s)


@dataclass
class _Held:
    epoch: int
    deadline: float  # monotonic
    since_s: float


@dataclass
class Leadership:
    """This server's side of the lease; thread-safe (the lease thread renews, the controller thread checks)."""

    sessions: sessionmaker[Session]
    server: ServerInfo
    settings: LeaseSettings = field(default_factory=LeaseSettings)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    #: the store is this server's alone (SQLite under the single-server lock): take the lease at once
    exclusive: bool = False
    _held: _Held | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    # ---- the lease -----------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        """The epoch this server holds, while its local deadline holds; None otherwise."""
        with self._lock:
            held = self._held
        return held.epoch if held is not None and self.monotonic() < held.deadline else None

    def renew(self) -> int | None:
        """Acquire or renew the lease (one transaction). Returns the epoch held, or None (a standby)."""
        started = self.monotonic()
        with self._lock:
            mine = self._held.epoch if self._held is not None else None
        try:
            epoch, since = self._renew_tx(mine)
        except IntegrityError:  # two servers inserted the first lease row at once: the other one won
            epoch, since = None, 0.0
        with self._lock:
            if epoch is None:
                if self._held is not None:
                    log.warning("server %s lost the controller lease (epoch %d)", self.server.id, self._held.epoch)
                self._held = None
            else:
                if mine != epoch:
                    log.warning("server %s leads (controller lease epoch %d)", self.server.id, epoch)
                deadline = started + self.settings.ttl_s - self.settings.margin_s
                self._held = _Held(epoch, deadline, since)
        return epoch

    def _renew_tx(self, mine: int | None) -> tuple[int | None, float]:
        with self.sessions.begin() as s:
            row = s.scalars(select(t.Lease).where(t.Lease.name == LEASE).with_for_update()).first()
            now = self.clock()
            if row is None:
                row = t.Lease(name=LEASE, holder="", epoch=0, expires_at_s=0.0, renewed_at_s=0.0, acquired_at_s=0.0)
                s.add(row)
            if row.holder == self.server.id and row.epoch == mine and row.expires_at_s > now:
                row.expires_at_s, row.renewed_at_s = now + self.settings.ttl_s, now
                return row.epoch, self._since()
            if row.expires_at_s <= now or not row.holder or self.exclusive:
                row.holder, row.epoch = self.server.id, row.epoch + 1
                row.expires_at_s, row.renewed_at_s, row.acquired_at_s = now + self.settings.ttl_s, now, now
                return row.epoch, now
            return None, 0.0

    def _since(self) -> float:
        with self._lock:
            return self._held.since_s if self._held is not None else self.clock()

    def release(self) -> None:
        """Give the lease up now (a graceful stop), so that a standby takes over at its next try."""
        with self._lock:
            held, self._held = self._held, None
        if held is None:
            return
        with self.sessions.begin() as s:
            row = s.scalars(select(t.Lease).where(t.Lease.name == LEASE).with_for_update()).first()
            if row is not None and row.holder == self.server.id and row.epoch == held.epoch:
                row.expires_at_s = self.clock()

    def drop(self, epoch: int) -> None:
        """Stop acting for ``epoch`` locally (a fenced write failed): the next :meth:`renew` decides again."""
        with self._lock:
            if self._held is not None and self._held.epoch == epoch:
                self._held = None

    # ---- fencing -------------------------------------------------------------------------------------------
    def require(self, epoch: int) -> None:
        """Raise :class:`NotLeader` unless this server holds ``epoch`` and its local deadline holds (checked before
        every backend call, and inside every fenced transaction)."""
        with self._lock:
            held = self._held
        if held is None or held.epoch != epoch:
            raise NotLeader(self.server.id, f"the controller lease epoch {epoch} is no longer held here")
        if self.monotonic() >= held.deadline:
            raise NotLeader(self.server.id, f"the lease of epoch {epoch} may have expired (not renewed in time)")

    def check(self, session: Session, epoch: int) -> None:
        """The fence, first thing in a write transaction: the lease row, read ``FOR SHARE``, must still name this
        server and ``epoch``; else :class:`NotLeader` (the caller's transaction rolls back)."""
        self.require(epoch)
        row = session.execute(
            select(t.Lease.holder, t.Lease.epoch).where(t.Lease.name == LEASE).with_for_update(read=True)
        ).first()
        if row is None or row.holder != self.server.id or row.epoch != epoch:
            now = f"held by {row.holder} at epoch {row.epoch}" if row is not None else "no lease row"
            raise NotLeader(self.server.id, f"lease epoch {epoch} ended ({now})")

    @contextlib.contextmanager
    def fenced(self, epoch: int) -> Iterator[Session]:
        """A write transaction of the leader of ``epoch``: fenced first, committed at the end of the block."""
        with self.sessions.begin() as s:
            self.check(s, epoch)
            yield s

    # ---- heartbeats ----------------------------------------------------------------------------------------
    def heartbeat(self, last_cycle_s: float | None) -> None:
        """Record this server as alive (``servers``), with its role; the leader also prunes long-dead rows."""
        now = self.clock()
        role = LEADER if self.epoch is not None else STANDBY
        with self.sessions.begin() as s:
            row = s.get(t.Server, self.server.id)
            if row is None:
                info = self.server
                row = t.Server(id=info.id, host=info.host, pid=info.pid, url=info.url, started_at_s=info.started_at_s)
                s.add(row)
            row.last_seen_s, row.role = now, role
            if last_cycle_s is not None:
                row.last_cycle_s = last_cycle_s
            if role == LEADER:
                s.execute(delete(t.Server).where(t.Server.last_seen_s < now - self.settings.prune_after_s))

    def leave(self) -> None:
        """Remove this server from ``servers`` (a graceful stop)."""
        with self.sessions.begin() as s:
            s.execute(delete(t.Server).where(t.Server.id == self.server.id))


class FencedSessions:
    """``sessions`` whose ``begin()`` transactions are fenced for ``epoch`` (for use cases that take a
    ``sessionmaker``, e.g. the hourly grant check)."""

    def __init__(self, sessions: sessionmaker[Session], leadership: Leadership, epoch: int) -> None:
        self._sessions, self._leadership, self._epoch = sessions, leadership, epoch

    def __call__(self) -> Session:
        return self._sessions()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:
        with self._leadership.fenced(self._epoch) as s:
            yield s


# ---- status ---------------------------------------------------------------------------------------------------
#: what tenants do not see of a server (where the control plane runs)
PRIVATE_FIELDS = ("host", "pid", "url")


def status(session: Session, now_s: float, settings: LeaseSettings, private: bool) -> dict[str, Any]:
    """The leader, the standbys, the lease and the last cycle, for ``kfabric status`` / ``GET /v1/status``.
    ``private`` adds where each server runs (host, pid, URL): operators and providers."""
    lease = session.get(t.Lease, LEASE)
    rows = session.scalars(select(t.Server).order_by(t.Server.started_at_s, t.Server.id)).all()
    servers = [_server(r, now_s, settings, private) for r in rows]
    held = lease is not None and lease.holder != "" and lease.expires_at_s > now_s
    leader = next((s for s in servers if held and lease is not None and s["id"] == lease.holder), None)
    if leader is not None and lease is not None:
        leader["since_s"] = lease.acquired_at_s or None
    cycle = leader["last_cycle_s"] if leader else None
    return {
        "now_s": now_s,
        "lease": {
            "name": LEASE,
            "holder": lease.holder if lease is not None else None,
            "epoch": lease.epoch if lease is not None else 0,
            "expires_at_s": lease.expires_at_s if lease is not None else None,
            "expires_in_s": round(lease.expires_at_s - now_s, 3) if lease is not None else None,
            "held": held,
            "ttl_s": settings.ttl_s,
        },
        "leader": leader,
        "standbys": [s for s in servers if leader is None or s["id"] != leader["id"]],
        "last_cycle_s": cycle,
        "last_cycle_age_s": round(now_s - cycle, 3) if cycle is not None else None,
    }


def _server(row: t.Server, now_s: float, settings: LeaseSettings, private: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "role": row.role,
        "started_at_s": row.started_at_s,
        "last_seen_s": row.last_seen_s,
        "heartbeat_age_s": round(now_s - row.last_seen_s, 3),
        "stale": now_s - row.last_seen_s > settings.stale_after_s,
        "last_cycle_s": row.last_cycle_s,
    }
    if private:
        out |= {"host": row.host, "pid": row.pid, "url": row.url}
    return out
