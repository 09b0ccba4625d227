"""The per-pool columns of running work the snapshot keeps as work starts and ends, against the running jobs."""

from __future__ import annotations

import random

import numpy as np
import pytest
from builders import a_job, hgx_fleet, place, run, share, snapshot_of

from kfabric.model import PriorityClass
from kfabric.sched.run_index import FANCY_MIN
from kfabric.sched.snapshot import Snapshot
from kfabric.sched.victims import VictimTable

NOW = 10_000.0


def _expected(snap: Snapshot, pool: int, now_s: float) -> dict[str, tuple[object, ...]]:
    """Per running job of the pool: what the table must say, from the job records."""
    out: dict[str, tuple[object, ...]] = {}
    for r in snap.running_by_pool.get(pool, {}).values():
        service = snap.attained_gpu_s.get(r.job.id, 0.0) + max(0.0, now_s - r.start_s) * r.gpus
        shares = sorted((s.node, len(s.gpus) * s.gpu_milli) for s in r.placement.shares)
        out[r.job.id] = (
            r.job.preemptible,
            int(r.job.priority),
            r.borrowed,
            r.start_s,
            r.expected_end_s,
            r.milli,
            r.lost_work_gpu_s(now_s),
            service,
            shares,
        )
    return out


def _actual(snap: Snapshot, pool: int, now_s: float) -> dict[str, tuple[object, ...]]:
    t = VictimTable.of(snap.run_index[pool], now_s)
    out: dict[str, tuple[object, ...]] = {}
    for slot in np.flatnonzero(t.alive).tolist():
        r = t.runs[slot]
        assert r is not None and t.index[r.job.id] == slot
        rows = np.flatnonzero(t.share_alive & (t.share_run == slot))
        shares = sorted(zip(t.share_node[rows].tolist(), t.share_milli[rows].astype(int).tolist(), strict=True))
        out[r.job.id] = (
            bool(t.preemptible[slot]),
            int(t.priority[slot]),
            bool(t.borrowed[slot]),
            float(t.start_s[slot]),
            float(t.end_s[slot]),
            int(t.milli[slot]),
            pytest.approx(float(t.lost[slot])),
            pytest.approx(float(t.service[slot])),
            shares,
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_columns_follow_starts_ends_and_checkpoints(seed: int) -> None:
    rng = random.Random(seed)
    snap = snapshot_of(hgx_fleet(nodes=8, nodes_per_rack=2, racks_per_unit=2))
    free = [(node, g) for node in range(8) for g in range(8)]
    held: dict[str, list[tuple[int, int]]] = {}
    for step in range(300):
        if held and (rng.random() < 0.45 or not free):
            job_id = rng.choice(sorted(held))
            snap.finish(job_id)
            free.extend(held.pop(job_id))
            snap.attained_gpu_s[job_id] = rng.uniform(0, 5_000)  # the next run starts with earlier service
        elif held and rng.random() < 0.1:
            job_id = rng.choice(sorted(held))
            snap.checkpointed(job_id, NOW - rng.uniform(0, 3_000))
        else:
            n = min(rng.choice([1, 1, 2, 4, 8, 12]), len(free))
            rng.shuffle(free)
            gpus, free = free[:n], free[n:]
            by_node: dict[int, list[int]] = {}
            for node, g in gpus:
                by_node.setdefault(node, []).append(g)
            job_id = f"j{step}"
            job = (
                a_job(job_id).gpus(n).priority(rng.choice(list(PriorityClass))).preemptible(rng.random() < 0.8).build()
            )
            shares = [share(node, *sorted(gs)) for node, gs in sorted(by_node.items())]
            run(snap, job, place("p", *shares), NOW - rng.uniform(0, 20_000), borrowed=rng.random() < 0.3)
            held[job_id] = gpus
        if step % 25 == 0:
            assert _actual(snap, 0, NOW) == _expected(snap, 0, NOW)
    assert _actual(snap, 0, NOW) == _expected(snap, 0, NOW)
    assert len(snap.run_index[0]) == len(snap.running)


def test_a_freed_slot_is_reused_lowest_first() -> None:
    snap = snapshot_of(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    for i in range(4):
        run(snap, a_job(f"j{i}").gpus(1).build(), place("p", share(0, i)), 0.0)
    snap.finish("j2")
    snap.finish("j0")
    run(snap, a_job("k").gpus(1).build(), place("p", share(0, 0)), 0.0)
    assert snap.run_index[0].slot_of == {"j1": 1, "j3": 3, "k": 0}


def test_a_job_indexed_twice_is_refused() -> None:
    snap = snapshot_of(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    run(snap, a_job("j").gpus(1).build(), place("p", share(0, 0)), 0.0)
    with pytest.raises(ValueError, match="already indexed"):
        snap.run_index[0].add(snap.running["j"], 0.0)


@pytest.mark.parametrize("nodes", [2, FANCY_MIN - 1, FANCY_MIN, 48])
def test_a_gang_of_any_size_is_indexed_node_by_node(nodes: int) -> None:
    # below FANCY_MIN shares a run's rows are written one by one, from it with one write per column
    snap = snapshot_of(hgx_fleet(nodes=48, nodes_per_rack=4, racks_per_unit=12))
    run(snap, a_job("small").gpus(2).build(), place("p", share(47, 6, 7)), NOW - 100.0)
    gang = a_job("gang").gpus(8 * nodes).build()
    run(snap, gang, place("p", *(share(n, *range(8)) for n in range(nodes))), NOW - 50.0)
    assert _actual(snap, 0, NOW) == _expected(snap, 0, NOW)
    snap.finish("gang")
    assert _actual(snap, 0, NOW) == _expected(snap, 0, NOW)
    run(snap, a_job("again").gpus(8 * nodes).build(), place("p", *(share(n, *range(8)) for n in range(nodes))), NOW)
    assert _actual(snap, 0, NOW) == _expected(snap, 0, NOW)
