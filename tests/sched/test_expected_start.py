"""Expected start times (``sched.expected_start``): in a world where nothing new arrives and every job runs to
its time limit, the estimate made after the first cycle is when the job starts; every pending job gets a time or
a why; the estimate changes neither the snapshot nor the decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from builders import (
    DAY_S,
    a_fleet,
    a_job,
    apply_decision,
    decision_key,
    hgx_fleet,
    place,
    queue_of,
    run,
    share,
    snapshot_of,
    snapshot_state,
)

from kfabric.model import Job, PriorityClass
from kfabric.sched.cycle import cycle
from kfabric.sched.expected_start import Estimate, expected_starts
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import Snapshot

NOW = 100 * DAY_S
FIFO = Policy(ordering="fifo")


def simulate(snap: Snapshot, q: PendingQueue, policy: Policy) -> tuple[dict[str, Estimate], dict[str, float]]:
    """The estimates after the first cycle, and when each job started: cycles at each job end until the queue
    is empty (jobs run exactly their time limits; nothing new arrives)."""
    now = NOW
    first: dict[str, Estimate] | None = None
    started: dict[str, float] = {}
    for _ in range(1000):
        decision = cycle(snap, q, policy, now)
        if first is None:
            before = snapshot_state(snap)
            first = expected_starts(snap, q, decision, now)
            assert snapshot_state(snap) == before, "estimating must leave the snapshot as found"
            assert decision_key(cycle(snap, q, policy, now)) == decision_key(decision), "nor change the decision"
        started.update({a.job_id: a.start_at_s for a in decision.admissions})
        apply_decision(snap, q, decision)
        if not len(q):
            break
        now = min(r.expected_end_s for r in snap.running.values())
        for job_id in [j for j, r in snap.running.items() if r.expected_end_s <= now]:
            snap.finish(job_id)
    assert first is not None
    return first, started


@dataclass(frozen=True)
class World:
    nodes: int
    running: tuple[tuple[int, int, float], ...]  # (node, GPUs, seconds left)
    pending: tuple[Job, ...]


def j(job_id: str, gpus: int, limit_s: float, submitted: float) -> Job:
    return a_job(job_id).gpus(gpus).limit_s(limit_s).submitted(NOW - 1000 + submitted).build()


WORLDS = {
    # a wide job waits for both nodes; a short one backfills in front of it; a third waits behind the wide one
    "backfill": World(
        2,
        ((0, 8, 100), (1, 8, 200)),
        (j("wide", 16, 300, 0), j("short", 8, 100, 1), j("after", 8, 50, 2)),
    ),
    # a line of full-node jobs on one node, each after the one ahead of it
    "line": World(1, ((0, 8, 60),), tuple(j(f"n{i}", 8, 120, i) for i in range(4))),
    # half-node jobs pair up as GPUs free
    "halves": World(
        1,
        ((0, 4, 30), (0, 4, 90)),
        (j("h1", 4, 100, 0), j("h2", 4, 100, 1), j("h3", 4, 100, 2), j("h4", 8, 10, 3)),
    ),
}


@pytest.mark.parametrize("policy", [FIFO, PRESETS["multifactor"]], ids=["fifo-easy", "multifactor"])
@pytest.mark.parametrize("world", list(WORLDS.values()), ids=list(WORLDS))
def test_the_estimate_is_when_the_job_starts(world: World, policy: Policy) -> None:
    snap = snapshot_of(hgx_fleet(nodes=world.nodes))
    for i, (node, gpus, left) in enumerate(world.running):
        first = 0 if not any(n == node for n, _g, _l in world.running[:i]) else 4
        blocker = a_job(f"run{i}").gpus(gpus).limit_s(left + 500).build()
        run(snap, blocker, place("p", share(node, *range(first, first + gpus))), NOW - 500)
    q = queue_of(snap, *world.pending)
    estimates, started = simulate(snap, q, policy)
    assert set(started) == {job.id for job in world.pending}
    for job_id, estimate in estimates.items():
        assert estimate.why == "", (job_id, estimate)
        assert estimate.start_s == pytest.approx(started[job_id]), job_id


def test_the_backfill_world_has_the_expected_times() -> None:
    """The plan in numbers (seconds after now): the wide job at 200, the short one backfilled at 100, the third at
    500 (after the wide one's 300 s)."""
    snap = snapshot_of(hgx_fleet(nodes=2))
    run(snap, a_job("r0").gpus(8).limit_s(600).build(), place("p", share(0, *range(8))), NOW - 500)
    run(snap, a_job("r1").gpus(8).limit_s(700).build(), place("p", share(1, *range(8))), NOW - 500)
    q = queue_of(snap, *WORLDS["backfill"].pending)
    got = expected_starts(snap, q, cycle(snap, q, FIFO, NOW), NOW)
    assert {k: (e.start_s or 0) - NOW for k, e in got.items()} == {"wide": 200, "short": 100, "after": 500}


def test_every_pending_job_gets_a_time_or_a_why() -> None:
    fleet = a_fleet().pool("p", nodes=1).pool("q", nodes=1, model="H200").build()
    snap = snapshot_of(fleet)
    run(snap, a_job("r").gpus(8).limit_s(1000).build(), place("p", share(0, *range(8))), NOW)
    jobs = [
        a_job("b200").gpus(1).models("B200").submitted(NOW - 50).build(),  # no pool has the model
        *(a_job(f"w{i}").gpus(8).models("H100").limit_s(100).submitted(NOW - 40 + i).build() for i in range(5)),
    ]
    q = queue_of(snap, *jobs)
    decision = cycle(snap, q, FIFO, NOW)
    got = expected_starts(snap, q, decision, NOW, horizon=3)
    assert set(got) == set(decision.pending) == {j.id for j in jobs}
    assert got["b200"].start_s is None and "gpu_model" in got["b200"].why and "B200" in got["b200"].why
    planned = [got[f"w{i}"] for i in range(5)]
    # w0 holds the cycle's reservation (free to plan); w1..w3 are the 3 planned; w4 is past the horizon
    assert [e.start_s - NOW for e in planned[:4] if e.start_s is not None] == [1000, 1100, 1200, 1300]
    assert planned[4].start_s is None and "beyond the planning horizon" in planned[4].why
    for e in got.values():
        assert (e.start_s is None) != (e.why == "")


def test_preempted_victims_free_their_gpus_for_the_plan() -> None:
    """A preemption frees the victim's GPUs after its grace period: the preemptor starts then, and the job
    behind it holds its reservation right after (both estimates at or after now)."""
    snap = snapshot_of(hgx_fleet(nodes=1))
    low = a_job("low").gpus(8).limit_s(100_000).preemptible().priority(PriorityClass.LOW).build()
    run(snap, low, place("p", share(0, *range(8))), NOW - 5000)
    high = a_job("high").gpus(8).limit_s(100).priority(PriorityClass.HIGH).build()
    after = a_job("after").gpus(8).limit_s(100).priority(PriorityClass.HIGH).submitted(NOW).build()
    third = a_job("third").gpus(8).limit_s(100).priority(PriorityClass.HIGH).submitted(NOW + 1).build()
    q = queue_of(snap, high, after, third)
    decision = cycle(snap, q, FIFO, NOW)
    assert [p.job_id for p in decision.preemptions] == ["low"]
    (admission,) = decision.admissions
    got = expected_starts(snap, q, decision, NOW)
    assert set(got) == {"after", "third"}
    assert got["after"].start_s == pytest.approx(admission.start_at_s + 100)  # its reservation
    assert got["third"].start_s == pytest.approx(admission.start_at_s + 200)  # planned: the victim's GPUs
    assert admission.start_at_s == pytest.approx(NOW + FIFO.grace_s)
