"""The parts of a cycle on their own: sealed node columns, the placer's results, the memo."""

from __future__ import annotations

import random

import numpy as np
from builders import (
    a_job,
    capacity_state,
    check_invariants,
    decision_key,
    hgx_fleet,
    online_capacity,
    place,
    queue_of,
    share,
    snapshot_of,
)

from kfabric.model import MinTopology, PriorityClass
from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.cycle import cycle
from kfabric.sched.memo import CycleMemo, PlacementMemo
from kfabric.sched.placer import CLASS, TIME_LIMIT, NoFit, Placer
from kfabric.sched.policy import Policy
from kfabric.sched.profile import Profile
from kfabric.sched.quota import PoolChoice
from kfabric.sched.registry import PLACEMENTS
from kfabric.sched.snapshot import Snapshot

NOW = 10_000.0
EIGHT = tuple(range(8))
FIFO = Policy(ordering="fifo")


# ---- node columns ------------------------------------------------------------------------------------------------
def test_every_copy_of_a_fact_moves_together_under_random_changes() -> None:
    # takes and gives of whole nodes, whole GPUs and GPU shares, nodes going down and up, interleaved with
    # rollbacks: the arrays, their list mirrors and every aggregate stay consistent after each step
    cap = online_capacity(hgx_fleet(nodes=6, nodes_per_rack=2, racks_per_unit=2))
    rng = random.Random(7)
    held: list[tuple[int, tuple[int, ...], int]] = []
    for step in range(300):
        kind = rng.random()
        if kind < 0.45:
            node = rng.randrange(6)
            free = cap.free_gpus_on(node)
            if free:
                gpus = tuple(free[: rng.randint(1, len(free))])
                milli = rng.choice((MILLI_PER_GPU, MILLI_PER_GPU, 250, 500))
                cap.take(node, gpus, milli, 1_000, 1_024)
                held.append((node, gpus, milli))
        elif kind < 0.85 and held:
            node, gpus, milli = held.pop(rng.randrange(len(held)))
            cap.give(node, gpus, milli, 1_000, 1_024)
        elif kind < 0.95:
            node = rng.randrange(6)
            cap.set_up(node, not cap.node_up(node))
        else:
            before = capacity_state(cap)
            cap.logging = True
            mark = cap.mark()
            cap.take(0, tuple(cap.free_gpus_on(0)), MILLI_PER_GPU, 0, 0)
            cap.rollback(mark)
            cap.logging = False
            assert capacity_state(cap) == before, f"step {step}: rollback"
        check_invariants(cap)


def test_shape_fits_without_foresees_a_rack_that_freeing_makes_whole() -> None:
    # racks of two 8-GPU nodes; nodes 0 and 3 are busy: no rack holds a 16-GPU rack-bound gang now, but with
    # node 3's work gone rack 1 does (and the count-only answer says so before anything is freed)
    cap = online_capacity(hgx_fleet(nodes=4, nodes_per_rack=2, racks_per_unit=2))
    cap.take(0, EIGHT, MILLI_PER_GPU, 0, 0)
    cap.take(3, EIGHT, MILLI_PER_GPU, 0, 0)
    counts = [8, 8]
    assert cap.shape_fits(0, counts)  # two fully free nodes, in different racks
    assert not cap.shape_fits_without(0, counts, MinTopology.RACK, {})
    assert cap.shape_fits_without(0, counts, MinTopology.RACK, {3: 8})
    assert not cap.shape_fits_without(0, counts, MinTopology.RACK, {3: 4})  # half a node is not a whole one
    assert cap.shape_fits_without(0, counts, MinTopology.ANY, {})
    assert cap.node_whole(3) == 0 and cap.rack_of(3) == 1 and cap.unit_of(3) == 0


# ---- the placer --------------------------------------------------------------------------------------------------
def _placer(snap: Snapshot, profiles: dict[int, Profile]) -> Placer:
    return Placer(snap.capacity, PLACEMENTS["best-fit"], profiles, NOW, PlacementMemo())


def test_a_placer_answers_fit_with_the_choice_it_used() -> None:
    snap = snapshot_of(hgx_fleet())
    choice = PoolChoice(0, borrowed=False, guaranteed=False)
    got = _placer(snap, {}).place(a_job("j").gpus(8).build(), [choice])
    assert not isinstance(got, NoFit)
    placement, used = got
    assert used is choice and placement.pool == "p" and placement.gpu_milli_total == 8 * MILLI_PER_GPU


def test_a_placer_says_when_a_reservation_profile_held_the_job_back() -> None:
    # the pool has 32 free GPUs, but 24 are reserved from t+1h: a 16-GPU job fits now for 1h, not for 2h
    snap = snapshot_of(hgx_fleet())
    profile = Profile(NOW, float(snap.capacity.pool_milli[0]), np.zeros(0), np.zeros(0))
    profile.take(NOW + 3_600.0, 10 * 3_600.0, 24 * MILLI_PER_GPU)
    profile.reserved = True
    placer = _placer(snap, {0: profile})
    choice = PoolChoice(0, borrowed=False, guaranteed=False)
    assert not isinstance(placer.place(a_job("short").gpus(16).limit_h(1).build(), [choice]), NoFit)
    held = placer.place(a_job("long").gpus(16).limit_h(2).build(), [choice])
    assert isinstance(held, NoFit) and held.scope == TIME_LIMIT
    # a job too large for the pool fails by its shape: every class-mate would
    too_big = _placer(snap, {}).place(a_job("big").gpus(40).build(), [choice])
    assert isinstance(too_big, NoFit) and too_big.scope == CLASS


# ---- the memo ----------------------------------------------------------------------------------------------------
def test_a_memo_used_with_another_capacity_starts_empty() -> None:
    memo = CycleMemo()
    first, second = snapshot_of(hgx_fleet()), snapshot_of(hgx_fleet())
    q = queue_of(first, a_job("j").gpus(8).build())
    cycle(first, q, FIFO, NOW, memo=memo)
    assert memo.eligibility
    memo.bind(first.capacity)
    assert memo.eligibility  # same capacity: kept
    memo.bind(second.capacity)
    assert not memo.eligibility and not memo.victim_misses


def test_a_warm_memo_gives_the_decisions_a_fresh_one_gives() -> None:
    snap = snapshot_of(hgx_fleet(nodes=4))
    for node in (0, 3):
        job = a_job(f"low{node}").gpus(8).priority(PriorityClass.LOW).build()
        snap.start(job, place("p", share(node, *EIGHT)), NOW - 7_200.0, borrowed=False)
    memo = CycleMemo()
    gang = a_job("gang").gpus(16).topology(MinTopology.RACK).priority(PriorityClass.HIGH).build()
    small = a_job("small").gpus(2).build()
    for i in range(3):
        now = NOW + 60.0 * i
        warm = cycle(snap, queue_of(snap, gang, small), FIFO, now, memo=memo)
        fresh = cycle(snap, queue_of(snap, gang, small), FIFO, now)
        assert decision_key(warm) == decision_key(fresh)
