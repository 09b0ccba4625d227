"""Slurm habits on the service (issue 19), on the lab fleet with the sim backend and a fake clock: script snapshots,
arrays with a concurrency cap, dependencies (met, waiting, never satisfied), holds, --begin, updates, requeue and
array-aware cancel, all audited; the gate keeps every such job out of the cycle."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from kfabric.backends.sim import SimBackend
from kfabric.model.errors import Conflict, NotFound, ValidationError
from kfabric.scenarios.policies import load_policy
from kfabric.service import job_control, jobs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for, authenticate
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

    def submit(self, script: str | None = None, **spec: object) -> int:
        spec = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, "vision-lab", spec, self.clock(), script=script)
        return row.id

    def tick(self, times: int = 1, step_s: float = 30.0) -> None:
        for _ in range(times):
            self.rt.controller.tick()
            self.clock.now += step_s

    def row(self, job_id: int) -> t.Job:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return row

    def rows(self, array_id: int) -> list[t.Job]:
        with self.rt.sessions() as s:
            return list(s.scalars(select(t.Job).where(t.Job.array_job_id == array_id).order_by(t.Job.id)))

    def audit(self, action: str) -> list[t.AuditEntry]:
        with self.rt.sessions() as s:
            return list(s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == action)))


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    clock = Clock()
    sim = SimBackend(clock)
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=clock, account_interval_s=60)
    with rt.sessions() as s:
        token = rt.bootstrap_token
        if token is None:
            op = actor_for(s, s.scalars(select(t.User).where(t.User.role == "operator")).one())
        else:
            op = authenticate(s, token)
    yield World(rt, clock, sim, op)
    rt.close()


def test_script_snapshot_is_stored_exposed_and_audited(world: World) -> None:
    text = "#!/bin/bash\n#SBATCH -t 10\necho first version\n"
    job = world.submit(script=text, command="")
    assert world.row(job).script == text
    with world.rt.sessions() as s:
        assert job_control.job_script(s, world.op, job) == text
    detail = world.audit("job.submit")[-1].detail
    assert detail == {"script_sha256": hashlib.sha256(text.encode()).hexdigest(), "script_bytes": len(text.encode())}


def test_client_key_considers_the_script_and_the_new_fields(world: World) -> None:
    spec = {"gpus": 1, "time_limit_s": 600.0, "hold": True}
    first, created = jobs.submit(world.rt.sessions, world.op, "vision-lab", spec, world.clock(), "k1", script="a")
    again, created_again = jobs.submit(world.rt.sessions, world.op, "vision-lab", spec, world.clock(), "k1", script="a")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="different request"):
        jobs.submit(world.rt.sessions, world.op, "vision-lab", spec, world.clock(), "k1", script="b")
    with pytest.raises(Conflict, match="different request"):
        jobs.submit(world.rt.sessions, world.op, "vision-lab", {**spec, "hold": False}, world.clock(), "k1", script="a")


def test_array_tasks_are_rows_and_the_cap_holds_each_cycle(world: World) -> None:
    head = world.submit(gpus=1, array="0-9:3,20%2", runtime_estimate_s=100.0)
    rows = world.rows(head)
    assert [r.array_task_id for r in rows] == [0, 3, 6, 9, 20]
    assert {r.array_job_id for r in rows} == {head} and rows[0].id == head
    assert [r.client_key for r in rows[1:]] == [None] * 4
    most = 0
    for _ in range(40):
        world.tick()
        states = [world.row(r.id).state for r in rows]
        most = max(most, sum(s in ("admitted", "running") for s in states))
        if all(s == "succeeded" for s in states):
            break
    assert most == 2
    assert all(world.row(r.id).state == "succeeded" for r in rows)
    submit = world.audit("job.submit")[-1]
    assert submit.detail["tasks"] == 5 and submit.detail["last_id"] == rows[-1].id


def test_capped_tasks_say_why_they_wait(world: World) -> None:
    head = world.submit(gpus=1, array="0-5%1", runtime_estimate_s=1000.0)
    world.tick()
    rows = world.rows(head)
    waiting = [world.row(r.id) for r in rows[1:]]
    assert all(r.state == "pending" and r.reason_code == "array_limit" for r in waiting)
    assert f"array {head} runs at most 1 tasks at once" in waiting[0].reason


@pytest.mark.parametrize(
    ("first_command", "kind", "expect"),
    [
        ("true", "afterok", "succeeded"),
        ("exit 3", "afternotok", "succeeded"),
        ("true", "afterany", "succeeded"),
        ("exit 3", "afterany", "succeeded"),
    ],
    ids=["afterok-met", "afternotok-met", "afterany-after-success", "afterany-after-failure"],
)
def test_dependency_met_runs_after_the_first_ends(world: World, first_command: str, kind: str, expect: str) -> None:
    a = world.submit(gpus=1, command=first_command, runtime_estimate_s=300.0)
    b = world.submit(gpus=1, dependency=f"{kind}:{a}", runtime_estimate_s=60.0)
    world.tick()
    row = world.row(b)
    assert row.state == "pending" and row.reason_code == "dependency" and row.reason == f"waits for {kind}:{a}"
    for _ in range(30):
        world.tick()
    assert world.row(b).state == expect
    assert world.row(b).started_at_s >= world.row(a).ended_at_s


def test_never_satisfied_cancels_or_stays_pending(world: World) -> None:
    a = world.submit(gpus=1, command="exit 2", runtime_estimate_s=60.0)
    killed = world.submit(gpus=1, dependency=f"afterok:{a}")
    kept = world.submit(gpus=1, dependency=f"afterok:{a}", kill_on_invalid_dep=False)
    world.tick(times=6)
    assert world.row(a).state == "failed"
    row = world.row(killed)
    assert row.state == "cancelled" and row.reason.startswith("dependency never satisfied: afterok:")
    still = world.row(kept)
    assert still.state == "pending" and still.reason_code == "dependency"
    assert "dependency never satisfied" in still.reason and "--kill-on-invalid-dep=no" in still.reason
    ends = [e for e in world.audit("job.end") if e.object_id == str(killed)]
    assert ends and ends[0].detail["state"] == "cancelled"


def test_whole_array_and_one_task_as_dependencies(world: World) -> None:
    head = world.submit(gpus=1, array="0-2", runtime_estimate_s=120.0)
    last = world.rows(head)[-1]
    on_array = world.submit(gpus=1, dependency=f"afterok:{head}", runtime_estimate_s=60.0)
    on_task = world.submit(gpus=1, dependency=f"afterany:{head}_{last.array_task_id}", runtime_estimate_s=60.0)
    world.tick()
    assert world.row(on_array).reason == f"waits for afterok:{head}"
    for _ in range(20):
        world.tick()
    assert world.row(on_array).state == "succeeded" and world.row(on_task).state == "succeeded"
    assert world.row(on_array).started_at_s >= max(world.row(r.id).ended_at_s for r in world.rows(head))


def test_singleton_runs_one_job_of_a_name_at_a_time(world: World) -> None:
    ids = [world.submit(gpus=1, name="train", dependency="singleton", runtime_estimate_s=200.0) for _ in range(3)]
    overlaps = 0
    for _ in range(40):
        world.tick()
        overlaps = max(overlaps, sum(world.row(i).state in ("admitted", "running") for i in ids))
    assert overlaps == 1 and all(world.row(i).state == "succeeded" for i in ids)


def test_unknown_dependency_is_refused_at_submit(world: World) -> None:
    with pytest.raises(NotFound, match="999"):
        world.submit(dependency="afterok:999")
    a = world.submit(gpus=1)
    with pytest.raises(NotFound, match=f"{a}_4"):
        world.submit(dependency=f"afterok:{a}_4")
    with pytest.raises(ValidationError, match="afterokk"):
        world.submit(dependency=f"afterokk:{a}")


def test_hold_release_and_admin_hold(world: World) -> None:
    job = world.submit(gpus=1, hold=True)
    world.tick(times=2)
    row = world.row(job)
    assert row.state == "pending" and row.held_by == "user" and row.reason_code == "held"
    job_control.release(world.rt.sessions, world.op, str(job), world.clock())
    world.tick(times=2)
    assert world.row(job).state in ("admitted", "running")
    other = world.submit(gpus=1, begin_s=world.clock() + 10_000)
    changed = job_control.hold(world.rt.sessions, world.op, str(other), world.clock())
    assert changed.job_ids == (other,) and world.row(other).held_by == "admin"
    actions = [e.action for e in world.audit("job.hold")] + [e.action for e in world.audit("job.release")]
    assert actions == ["job.hold", "job.release"]
    with pytest.raises(Conflict, match="only pending jobs"):
        job_control.hold(world.rt.sessions, world.op, str(job), world.clock())


def test_begin_time_keeps_a_job_out_until_then(world: World) -> None:
    begin = world.clock() + 600
    job = world.submit(gpus=1, begin_s=begin)
    world.tick()
    row = world.row(job)
    assert row.reason_code == "begin_time" and row.expected_start_s == begin
    world.tick(times=25)
    row = world.row(job)
    assert row.state in ("running", "succeeded") and row.admitted_at_s >= begin


def test_update_changes_the_queued_job_and_checks_rights(world: World) -> None:
    blocker = world.submit(gpus=1, runtime_estimate_s=10_000.0, time_limit_s=20_000.0)
    job = world.submit(gpus=1, dependency=f"afterany:{blocker}", time_limit_s=7200.0)
    world.tick()
    job_control.update(world.rt.sessions, world.op, str(job), {"time_limit_s": 600.0, "priority": "low"}, world.clock())
    row = world.row(job)
    assert row.spec["time_limit_s"] == 600.0 and row.spec["priority"] == "low"
    assert world.audit("job.update")[-1].detail["changes"]["time_limit_s"] == [7200.0, 600.0]
    job_control.update(world.rt.sessions, world.op, str(job), {"dependency": ""}, world.clock())
    world.tick(times=2)
    live = world.rt.controller.live.job(str(job))
    assert live is not None and live.time_limit_s == 600.0  # the live state read the changed job again
    with pytest.raises(Conflict, match="only pending jobs"):
        job_control.update(world.rt.sessions, world.op, str(job), {"name": "x"}, world.clock())
    with pytest.raises(ValidationError, match=r"update\.nodes"):
        job_control.update(world.rt.sessions, world.op, str(blocker), {"nodes": 2}, world.clock())


def test_requeue_running_job_runs_again_as_next_attempt(world: World) -> None:
    job = world.submit(gpus=1, runtime_estimate_s=3000.0)
    world.tick(times=3)
    assert world.row(job).state == "running"
    job_control.requeue(world.rt.sessions, world.op, str(job), world.clock())
    world.tick(times=3)
    row = world.row(job)
    assert row.attempt == 2 and row.state in ("admitted", "running")
    assert any(e.detail.get("requested_by") == world.op.name for e in world.audit("job.requeue"))
    with pytest.raises(Conflict, match="pending"):
        job_control.requeue(world.rt.sessions, world.op, str(world.submit(gpus=1, hold=True)), world.clock())


def test_cancel_array_or_one_task(world: World) -> None:
    head = world.submit(gpus=1, array="0-4", hold=True)
    tasks = world.rows(head)
    _row, one = job_control.cancel(world.rt.sessions, world.op, f"{head}_3", world.clock())
    assert one.job_ids == (tasks[3].id,)
    _row, rest = job_control.cancel(world.rt.sessions, world.op, str(head), world.clock())
    assert len(rest.job_ids) == 4
    assert all(world.row(r.id).state == "cancelled" for r in tasks)
    with pytest.raises(NotFound):
        job_control.cancel(world.rt.sessions, world.op, f"{head}_7", world.clock())


def test_large_array_is_one_transaction(world: World) -> None:
    head = world.submit(gpus=1, array="0-9999%10", runtime_estimate_s=100.0)
    with world.rt.sessions() as s:
        count = s.scalar(select(func.count()).select_from(t.Job).where(t.Job.array_job_id == head))
        events = s.scalar(select(func.count()).select_from(t.JobEvent))
    assert count == 10_000 and events == 10_000
    world.tick(times=2)
    assert world.rt.controller.live.queue.__len__() <= 10
    with pytest.raises(ValidationError, match="more than 20000 tasks"):
        world.submit(gpus=1, array="0-30000")


@pytest.mark.parametrize(
    "shape",
    [
        "direct",  # c waits for a; a would wait for c
        "chain",  # c waits for b, b for a; a would wait for c
        "array",  # the array's tasks wait for a; a would wait for the array
    ],
)
def test_update_refuses_a_dependency_cycle(world: World, shape: str) -> None:
    a = world.submit(gpus=1, hold=True)
    if shape == "direct":
        c = world.submit(gpus=1, dependency=f"afterok:{a}")
    elif shape == "chain":
        b = world.submit(gpus=1, dependency=f"afterok:{a}")
        c = world.submit(gpus=1, dependency=f"afterany:{b}")
    else:
        c = world.submit(gpus=1, array="0-3", dependency=f"afternotok:{a}")
    before = world.row(a).dependency
    with pytest.raises(ValidationError, match=r"update\.dependency.*cycle.*wait for itself") as err:
        job_control.update(world.rt.sessions, world.op, str(a), {"dependency": f"afterok:{c}"}, world.clock())
    assert str(c) in str(err.value)
    assert world.row(a).dependency == before  # nothing written
    # not a cycle: a may wait for an unrelated job
    other = world.submit(gpus=1)
    job_control.update(world.rt.sessions, world.op, str(a), {"dependency": f"afterany:{other}"}, world.clock())
    assert world.row(a).dependency == f"afterany:{other}"
