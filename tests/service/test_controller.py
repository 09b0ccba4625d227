"""The controller loop on the lab fleet with the sim backend and a fake clock: submissions run to completion,
preemption requeues, a backend that is down loses nothing, a lost attempt is requeued, a restarted controller
rebuilds its state from the store, and accounting charges what ran."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service import accounting, jobs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for, authenticate
from kfabric.service.controller import Controller
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    rt: Runtime
    clock: Clock
    sim: SimBackend
    op: Actor

    @property
    def ctl(self) -> Controller:
        return self.rt.controller

    def submit(self, project: str = "vision-lab", key: str | None = None, **spec: object) -> int:
        spec = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, project, spec, self.clock(), key)
        return row.id

    def run_for(self, seconds: float, step_s: float = 30.0) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.ctl.tick()
            self.clock.now += step_s
        self.ctl.tick()

    def state(self, job_id: int) -> t.Job:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return row


def _open(db_url: str, clock: Clock, sim: SimBackend) -> World:
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=clock, account_interval_s=60)
    with rt.sessions() as s:
        token = rt.bootstrap_token
        if token is None:
            user = s.scalars(select(t.User).where(t.User.role == "operator")).one()
            return World(rt, clock, sim, actor_for(s, user))
        return World(rt, clock, sim, authenticate(s, token))


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    clock = Clock()
    w = _open(db_url, clock, SimBackend(clock))
    yield w
    w.rt.close()


def test_jobs_run_to_completion_and_usage_is_charged(world: World) -> None:
    ids = [world.submit(runtime_estimate_s=600.0) for _ in range(3)]
    failing = world.submit(command="exit 3", gpus=1)
    world.run_for(1200)
    assert [world.state(i).state for i in ids] == ["succeeded"] * 3
    bad = world.state(failing)
    assert (bad.state, bad.exit_code) == ("failed", 3)
    with world.rt.sessions() as s:
        total = accounting.totals(s)
        gpu_s = s.scalar(select(func.sum(t.UsageRecord.gpu_s)))
        used = s.scalar(select(t.Grant.used_su_hours).where(t.Grant.name == "g-vision"))
    # 3 jobs x 8 GPUs x 600 s, plus the failing 1-GPU job (600 s too)
    assert gpu_s == pytest.approx(3 * 8 * 600 + 600, rel=1e-6)
    assert total["gpu_s"] == pytest.approx(gpu_s)
    assert used == pytest.approx(gpu_s / 3600.0, rel=1e-6)  # all on H100 (SU weight 1.0), charged to g-vision


def test_pending_job_has_a_reason_and_cancel_ends_it(world: World) -> None:
    big = world.submit(gpus=64)  # the lab fleet has 32 H100
    world.run_for(0)
    row = world.state(big)
    assert row.state == "pending"
    assert row.reason_code and row.reason
    jobs.cancel(world.rt.sessions, world.op, big, world.clock())
    assert world.state(big).state == "cancelled"


def test_cancel_of_a_running_job_terminates_it(world: World) -> None:
    jid = world.submit(runtime_estimate_s=3000.0)
    world.run_for(60)
    assert world.state(jid).state == "running"
    jobs.cancel(world.rt.sessions, world.op, jid, world.clock())
    world.run_for(60)
    row = world.state(jid)
    assert row.state == "cancelled"
    assert row.ended_at_s is not None


def test_backend_down_loses_nothing_and_catches_up(world: World) -> None:
    world.sim.available = False
    ids = [world.submit() for _ in range(2)]
    world.run_for(300)
    rows = [world.state(i) for i in ids]
    assert all(r.state == "admitted" and not r.launched for r in rows)  # placed, launch deferred
    world.sim.available = True
    world.run_for(900)
    assert [world.state(i).state for i in ids] == ["succeeded", "succeeded"]
    assert {world.state(i).attempt for i in ids} == {1}


def test_lost_attempt_is_requeued_as_the_next_attempt(world: World) -> None:
    jid = world.submit(runtime_estimate_s=1200.0)
    world.run_for(60)
    row = world.state(jid)
    assert row.state == "running"
    node = world.ctl.node_names[row.placement["shares"][0][0]]  # type: ignore[index]
    world.sim.fail_node(node)
    world.run_for(1800)
    row = world.state(jid)
    assert row.state == "succeeded"
    assert row.attempt == 2
    with world.rt.sessions() as s:
        events = [(e.from_state, e.to_state) for e in s.scalars(select(t.JobEvent).where(t.JobEvent.job_id == jid))]
    assert ("running", "preempted") in events and ("preempted", "pending") in events


def test_urgent_job_preempts_and_the_victim_resumes(world: World) -> None:
    # six 8-GPU jobs fill the lab fleet (32 H100 + 16 RTX PRO 6000)
    low = [world.submit(project="tinyml-llm", priority="low", runtime_estimate_s=3000.0) for _ in range(6)]
    world.run_for(60)
    assert all(world.state(i).state == "running" for i in low)
    urgent = world.submit(project="tinyml-llm", priority="urgent", gpus=8, runtime_estimate_s=300.0)
    world.run_for(7200)
    assert world.state(urgent).state == "succeeded"
    victims = [i for i in low if world.state(i).attempt > 1]
    assert victims, "one low-priority job was preempted to make room"
    assert all(world.state(i).state == "succeeded" for i in low)


def test_restarted_controller_rebuilds_from_the_store(db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    sim = SimBackend(clock)
    first = _open(db_url, clock, sim)
    running = first.submit(runtime_estimate_s=1200.0)
    first.run_for(60)
    waiting = first.submit(gpus=32, runtime_estimate_s=60.0)
    first.run_for(0)
    first.rt.close()
    # a new controller on the same store and the same (still running) cluster
    second = _open(db_url, clock, sim)
    assert second.rt.bootstrap_token is None
    second.run_for(0)
    assert str(running) in second.ctl.live.snap.running
    assert str(waiting) in second.ctl.live.queue
    second.run_for(2400)
    assert second.state(running).state == "succeeded"
    assert second.state(running).attempt == 1
    assert second.state(waiting).state == "succeeded"
    second.rt.close()


def test_an_idle_reservation_is_flagged_then_reclaimed(world: World) -> None:
    # lab-grants has a 30% utilization floor; g-vision reserves 8 H100 and nothing runs on them
    world.run_for(3 * 86_400, step_s=3600)
    with world.rt.sessions() as s:
        assert s.scalar(select(t.Grant.status).where(t.Grant.name == "g-vision")) == "flagged"
    world.run_for(5 * 86_400, step_s=3600)  # flagged for a whole 7-day window by now
    with world.rt.sessions() as s:
        grant = s.scalars(select(t.Grant).where(t.Grant.name == "g-vision")).one()
    assert grant.status == "reclaimed"
    assert grant.end_s <= world.clock()
    # the scheduler no longer counts the reservation
    assert world.ctl.live.snap.reserved("vision-lab", "H100", world.clock()) == 0
