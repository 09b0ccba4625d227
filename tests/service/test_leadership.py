"""The controller lease and fencing, in process, on SQLite and PostgreSQL (the ``db_url`` fixture), with clocks the
tests move: acquire, renew, expiry and takeover (the epoch grows by one), a stale holder's fenced transaction
raises and writes nothing (through the store fence and through the local deadline), a takeover waits for a fenced
transaction in flight, the backends' epoch fence (local, sim), the shared sim state, a controller that lost the
lease writes and launches nothing, status and heartbeats, and the SQLite single-server lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.backends.base import LaunchSpec, NodeGpus, RunState
from kfabric.backends.fencing import Fenced
from kfabric.backends.local import LocalBackend
from kfabric.backends.sim import SimBackend
from kfabric.cli.errors import UsageError
from kfabric.cli.serve_cmd import single_server_lock
from kfabric.scenarios.policies import load_policy
from kfabric.service import audit, jobs
from kfabric.service.auth import authenticate
from kfabric.service.leadership import Leadership, LeaseSettings, NotLeader, ServerInfo, status
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
TTL = 10.0


@dataclass
class Clocks:
    """A wall clock shared by every server (NTP agrees) and one monotonic clock per server (a paused process's
    monotonic clock runs on, its threads do not)."""

    wall: float = START
    mono: dict[str, float] = field(default_factory=dict)

    def advance(self, seconds: float, *servers: str) -> None:
        """Move the wall clock, and the monotonic clocks of ``servers`` (all when none is named)."""
        self.wall += seconds
        for name in servers or tuple(self.mono):
            self.mono[name] += seconds


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def _server(sessions: sessionmaker[Session], clocks: Clocks, name: str, exclusive: bool = False) -> Leadership:
    clocks.mono.setdefault(name, 0.0)
    info = ServerInfo(name, f"host-{name}", 100 + len(clocks.mono), f"http://{name}:8470", clocks.wall)
    return Leadership(
        sessions, info, LeaseSettings(ttl_s=TTL), lambda: clocks.wall, lambda: clocks.mono[name], exclusive
    )


def _lease(sessions: sessionmaker[Session]) -> tuple[str, int, float]:
    with sessions() as s:
        row = s.get(t.Lease, "controller")
        assert row is not None
        return row.holder, row.epoch, row.expires_at_s


def _audit_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(t.AuditEntry)) or 0)


# ---- the lease ------------------------------------------------------------------------------------------------
def test_acquire_renew_expire_takeover(sessions: sessionmaker[Session]) -> None:
    clocks = Clocks()
    a, b = _server(sessions, clocks, "a"), _server(sessions, clocks, "b")
    steps = [
        # (what happens, who renews, seconds before, epoch it gets, lease holder and epoch after)
        ("a acquires a free lease", a, 0.0, 1, ("a", 1)),
        ("b finds it held", b, 0.0, None, ("a", 1)),
        ("a renews: same epoch", a, 3.0, 1, ("a", 1)),
        ("b still a standby before expiry", b, TTL - 1.0, None, ("a", 1)),
        ("b takes over once it expired: epoch + 1", b, 1.5, 2, ("b", 2)),
        ("a renews too late: a standby", a, 0.0, None, ("b", 2)),
        ("b renews", b, 3.0, 2, ("b", 2)),
    ]
    for what, server, before, epoch, after in steps:
        clocks.advance(before)
        assert server.renew() == epoch, what
        holder, lease_epoch, expires = _lease(sessions)
        assert (holder, lease_epoch) == after, what
        assert server.epoch == epoch, what
    assert expires == clocks.wall + TTL


def test_graceful_release_lets_a_standby_take_over_at_once(sessions: sessionmaker[Session]) -> None:
    clocks = Clocks()
    a, b = _server(sessions, clocks, "a"), _server(sessions, clocks, "b")
    assert a.renew() == 1 and b.renew() is None
    a.release()
    assert a.epoch is None
    assert b.renew() == 2


def test_exclusive_server_takes_an_unexpired_lease(sessions: sessionmaker[Session]) -> None:
    """SQLite under the single-server lock: a restarted server need not wait for its predecessor's lease."""
    clocks = Clocks()
    old, new = _server(sessions, clocks, "old"), _server(sessions, clocks, "new", exclusive=True)
    assert old.renew() == 1
    assert new.renew() == 2
    assert _lease(sessions)[:2] == ("new", 2)


@pytest.mark.parametrize(
    ("case", "stale_monotonic", "message"),
    [
        # clocks skewed: the stale leader's own deadline has not passed; the lease row in the store stops it
        ("store fence", False, r"lease epoch 1 ended \(held by b at epoch 2\)"),
        # paused past its lease: its local deadline stops it before it reads the store
        ("local deadline", True, "may have expired"),
    ],
)
def test_stale_leader_fenced_transaction_raises_and_writes_nothing(
    sessions: sessionmaker[Session], case: str, stale_monotonic: bool, message: str
) -> None:
    clocks = Clocks()
    a, b = _server(sessions, clocks, "a"), _server(sessions, clocks, "b")
    assert a.renew() == 1
    clocks.advance(TTL + 1, *(["a", "b"] if stale_monotonic else ["b"]))
    assert b.renew() == 2
    before = _audit_count(sessions)
    with pytest.raises(NotLeader, match=message), a.fenced(1) as s:
        audit.record(s, "controller", "job.admit", "job", 1, clocks.wall, None, {"epoch": 1})
    assert _audit_count(sessions) == before, case
    with b.fenced(2) as s:  # the new leader writes
        audit.record(s, "controller", "job.admit", "job", 1, clocks.wall, None, {"epoch": 2})
    assert _audit_count(sessions) == before + 1


def test_paused_leader_knows_before_the_store(sessions: sessionmaker[Session]) -> None:
    """No takeover yet, but the leader's monotonic deadline passed: it must not act (it may have lost the lease)."""
    clocks = Clocks()
    a = _server(sessions, clocks, "a")
    assert a.renew() == 1
    clocks.advance(TTL - 1.0)  # past ttl - margin on its monotonic clock
    assert a.epoch is None
    with pytest.raises(NotLeader, match="may have expired"):
        a.require(1)
    clocks.advance(2.0)
    assert a.renew() == 2, "re-acquiring an expired lease starts a new epoch, even for the same server"


def test_takeover_waits_for_a_fenced_transaction_in_flight(sessions: sessionmaker[Session]) -> None:
    """The fence holds the lease row (FOR SHARE on PostgreSQL, the write lock on SQLite) until its transaction
    ends: a takeover that starts meanwhile waits, then starts the next epoch; the stale leader's next transaction
    is refused."""
    clocks = Clocks()
    a, b = _server(sessions, clocks, "a"), _server(sessions, clocks, "b")
    assert a.renew() == 1
    got: list[int | None] = []
    with a.fenced(1) as s:
        audit.record(s, "controller", "job.admit", "job", 1, clocks.wall, None, {"epoch": 1})
        clocks.advance(TTL + 1, "b")
        taker = threading.Thread(target=lambda: got.append(b.renew()))
        taker.start()
        taker.join(0.5)
        assert taker.is_alive(), "the takeover did not wait for the fenced transaction"
    taker.join(10)
    assert got == [2]
    with pytest.raises(NotLeader), a.fenced(1):
        pass


# ---- status and heartbeats ----------------------------------------------------------------------------------
def test_status_heartbeats_stale_and_prune(sessions: sessionmaker[Session]) -> None:
    clocks = Clocks()
    a, b, c = (_server(sessions, clocks, n) for n in "abc")
    assert a.renew() == 1
    for server in (a, b, c):
        server.heartbeat(clocks.wall)
    for _ in range(4):  # c falls silent for 20 s: stale after 3 renew intervals (10 s); a renews meanwhile
        clocks.advance(5.0)
        assert a.renew() == 1
    a.heartbeat(clocks.wall - 1)
    b.heartbeat(None)
    settings = a.settings
    with sessions() as s:
        full = status(s, clocks.wall, settings, private=True)
        tenant = status(s, clocks.wall, settings, private=False)
    assert full["leader"]["id"] == "a" and full["leader"]["host"] == "host-a"
    assert full["lease"]["epoch"] == 1 and full["last_cycle_age_s"] == 1.0
    assert {s["id"]: s["stale"] for s in full["standbys"]} == {"b": False, "c": True}
    assert "host" not in tenant["leader"] and all("pid" not in s for s in tenant["standbys"])
    clocks.advance(settings.prune_after_s + 1)
    assert a.renew() == 2  # expired meanwhile: a new epoch
    a.heartbeat(None)  # the leader prunes rows not heard from for prune_after_s
    with sessions() as s:
        assert {r.id for r in s.scalars(select(t.Server))} == {"a"}


# ---- backends -------------------------------------------------------------------------------------------------
def _spec(job: str, attempt: int = 1, node: str = "n1") -> LaunchSpec:
    return LaunchSpec(job, attempt, job, "train", (NodeGpus(node, (0,)),), 100.0, runtime_s=50.0)


@pytest.mark.parametrize("kind", ["sim", "local"])
@pytest.mark.parametrize("act", ["launch", "terminate"])
def test_backend_refuses_a_stale_epoch(tmp_path: Path, kind: str, act: str) -> None:
    """Two backend objects on one state folder (two servers on one machine): once the new leader fenced it, the
    old leader's object refuses to launch or terminate (Fenced, nothing changed)."""

    def make() -> SimBackend | LocalBackend:
        if kind == "sim":
            return SimBackend(lambda: START, state_dir=tmp_path / "sim")
        return LocalBackend(tmp_path / "local", node="n1", gpus=1, clock=lambda: START)

    old, new = make(), make()
    old.fence(1)
    new.fence(2)
    with pytest.raises(Fenced, match="acts for lease epoch 1 but epoch 2 took over"):
        if act == "launch":
            old.launch(_spec("7"))
        else:
            old.terminate("7", 1)
    assert [r for r in new.poll() if r.job_id == "7"] == []
    if kind == "sim":
        new.launch(_spec("7"))
        assert [(r.job_id, r.state) for r in old.poll()] == [("7", RunState.RUNNING)]


def test_launch_raced_by_a_takeover_is_withdrawn(tmp_path: Path) -> None:
    """The fence rises after the stale leader's check but while it creates the attempt: the launch is refused and
    the attempt it created is lost (nothing ran), so the new leader requeues it as the next attempt."""
    old = SimBackend(lambda: START, state_dir=tmp_path / "sim")
    new = SimBackend(lambda: START, state_dir=tmp_path / "sim")
    old.fence(1)
    create = old._launch

    def raced(spec: LaunchSpec) -> object:
        made = create(spec)
        new.fence(2)  # the takeover lands in the window
        return made

    old._launch = raced  # type: ignore[assignment,method-assign]
    with pytest.raises(Fenced):
        old.launch(_spec("9"))
    (report,) = new.poll()
    assert (report.job_id, report.state, report.message) == (
        "9",
        RunState.LOST,
        "withdrawn: launched by a fenced controller",
    )


def test_sim_state_is_shared_between_processes(tmp_path: Path) -> None:
    clock = [START]
    one = SimBackend(lambda: clock[0], speedup=2.0, state_dir=tmp_path / "sim")
    two = SimBackend(lambda: clock[0], speedup=2.0, state_dir=tmp_path / "sim")
    one.launch(_spec("1"))
    one.launch(_spec("2"))
    two.launch(_spec("1"))  # idempotent across objects: known already
    assert sorted((r.job_id, r.state) for r in two.poll()) == [("1", RunState.RUNNING), ("2", RunState.RUNNING)]
    two.terminate("2", 1)
    clock[0] += 30.0  # runtime 50 s at speedup 2: done after 25 s
    states = {r.job_id: (r.state, r.ended_at_s) for r in one.poll()}
    assert states == {"1": (RunState.SUCCEEDED, START + 25.0), "2": (RunState.CANCELLED, START)}
    lines = [json.loads(x) for x in (tmp_path / "sim" / "launches.log").read_text().splitlines()]
    assert [(x["job_id"], x["attempt"]) for x in lines] == [("1", 1), ("2", 1)]
    assert two.forget("1", 1) and [r.job_id for r in one.poll()] == ["2"]


# ---- the controller -------------------------------------------------------------------------------------------
@dataclass
class Node:
    rt: Runtime
    sim: SimBackend
    lead: Leadership


@pytest.fixture
def pair(db_url: str, tmp_path: Path) -> Iterator[tuple[Node, Node, Clocks]]:
    clocks = Clocks()
    nodes = []
    for name in ("a", "b"):
        sim = SimBackend(lambda: clocks.wall, state_dir=tmp_path / "sim")
        rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=lambda: clocks.wall)
        nodes.append(Node(rt, sim, _server(rt.sessions, clocks, name)))
    yield nodes[0], nodes[1], clocks
    for node in nodes:
        node.rt.close()


def test_controller_that_lost_the_lease_writes_and_launches_nothing(pair: tuple[Node, Node, Clocks]) -> None:
    a, b, clocks = pair
    with a.rt.sessions() as s:
        token = a.rt.bootstrap_token or b.rt.bootstrap_token
        assert token is not None
        op = authenticate(s, token)
    spec = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0}
    first, _ = jobs.submit(a.rt.sessions, op, "vision-lab", spec, clocks.wall, "k1")
    assert a.lead.renew() == 1
    a.rt.controller.lead(a.lead, 1)
    assert a.rt.controller.tick().launched == 1
    # a pauses; b takes over, adopts job 1 from the shared sim state
    clocks.advance(TTL + 1, "b")
    assert b.lead.renew() == 2
    b.rt.controller.lead(b.lead, 2)
    second, _ = jobs.submit(a.rt.sessions, op, "vision-lab", spec, clocks.wall, "k2")
    audits = _audit_count(a.rt.sessions)
    with pytest.raises(NotLeader):  # a wakes (its monotonic clock did not move: the store fence stops it)
        a.rt.controller.tick()
    assert _audit_count(a.rt.sessions) == audits
    with pytest.raises(Fenced):  # and the backend refuses what it would have launched
        a.sim.launch(_spec(str(second.id)))
    rep = b.rt.controller.tick()
    assert (rep.started, rep.launched) == (1, 1)
    with b.rt.sessions() as s:
        rows = {r.id: (r.state, r.attempt) for r in s.scalars(select(t.Job))}
        epochs = [e.detail.get("epoch") for e in s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id))]
    assert rows == {first.id: ("running", 1), second.id: ("admitted", 1)}
    stamped = [e for e in epochs if e is not None]
    assert stamped == sorted(stamped) and stamped[-1] == 2, "an entry of epoch 1 after epoch 2 began"
    launches = [json.loads(x) for x in (b.sim.state_dir / "launches.log").read_text().splitlines()]  # type: ignore[operator]
    assert [(x["job_id"], x["epoch"]) for x in launches] == [(str(first.id), 1), (str(second.id), 2)]


# ---- the SQLite single-server lock ---------------------------------------------------------------------------
def test_second_server_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "kfabric.db"
    first = ServerInfo("srv-1", "host-1", 4242, "http://x", START)
    with single_server_lock(db, first):
        with pytest.raises(UsageError) as err, single_server_lock(db, ServerInfo("srv-2", "h", 1, "u", START)):
            pass
        text = str(err.value)
        assert "pid 4242 on host-1, started 2026-03-02 00:00:00 UTC" in text and "PostgreSQL" in text
    with single_server_lock(db, ServerInfo("srv-3", "h", 1, "u", START)):
        pass  # released at the end of the first block


def test_lock_of_a_killed_server_does_not_block_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "kfabric.db"
    holder = (
        "import sys,time; from pathlib import Path; from kfabric.cli.serve_cmd import single_server_lock;"
        "from kfabric.service.leadership import ServerInfo;"
        "cm = single_server_lock(Path(sys.argv[1]), ServerInfo('srv-dead','h',1,'u',0.0)); cm.__enter__();"
        "print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError), single_server_lock(db, ServerInfo("srv-2", "h", 1, "u", START)):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        with single_server_lock(db, ServerInfo("srv-2", "h", 1, "u", START)):
            pass
        print(f"restart after SIGKILL took the lock in {(time.monotonic() - t0) * 1000:.2f} ms")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
