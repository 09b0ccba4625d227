"""One trial owns every tentative change (capacity, availability profiles): kept or undone whole, nested."""

from __future__ import annotations

import numpy as np
import pytest
from builders import a_job, capacity_state, check_invariants, hgx_fleet, place, share, snapshot_of

from kfabric.sched.profile import Profile
from kfabric.sched.snapshot import RunningJob, Snapshot
from kfabric.sched.trial import Trial

NOW = 10_000.0
EIGHT = tuple(range(8))


def _busy() -> tuple[Snapshot, list[RunningJob]]:
    """Four 8-GPU nodes, each running one 8-GPU job that ends in 1, 2, 3 and 4 hours."""
    snap = snapshot_of(hgx_fleet())
    for node in range(4):
        job = a_job(f"r{node}").gpus(8).limit_h(node + 1).build()
        snap.start(job, place("p", share(node, *EIGHT)), NOW, borrowed=False)
    return snap, [snap.running[f"r{node}"] for node in range(4)]


def _steps(profile: Profile) -> list[float]:
    """The profile's free milli over each half hour of the next five hours (its values, not its breakpoints)."""
    return [profile.min_free(NOW + h * 1_800.0, NOW + (h + 1) * 1_800.0) for h in range(10)]


def _profile(snap: Snapshot) -> Profile:
    runs = list(snap.running.values())
    ends = np.array([r.expected_end_s for r in runs])
    milli = np.array([float(r.milli) for r in runs])
    return Profile(NOW, float(snap.capacity.pool_milli[0]), ends, milli)


def test_leaving_a_trial_without_commit_undoes_capacity_and_profile() -> None:
    snap, runs = _busy()
    cap = snap.capacity
    profiles = {0: _profile(snap)}
    before, steps = capacity_state(cap), _steps(profiles[0])
    with Trial(cap, profiles, NOW) as t:
        t.free(runs[3])
        t.free(runs[1])
        assert cap.whole.tolist() == [0, 8, 0, 8]
        assert _steps(profiles[0])[0] == 16_000.0  # both come free now in the profile too
        assert t.freed == [runs[3], runs[1]]
    assert capacity_state(cap) == before
    assert _steps(profiles[0]) == steps
    assert not cap.logging
    check_invariants(cap)


def test_an_outermost_commit_makes_the_changes_permanent() -> None:
    snap, runs = _busy()
    cap = snap.capacity
    released = cap.released[0]
    with Trial(cap, {}, NOW) as t:
        t.free(runs[0])
        t.commit()
    assert cap.whole.tolist() == [8, 0, 0, 0]
    assert not cap.logging and cap.mark() == 0  # nothing left to undo
    assert cap.released[0] == released + 1  # the freed node counts as released for good
    check_invariants(cap)


def test_a_nested_commit_stays_undoable_by_the_outer_trial() -> None:
    snap, runs = _busy()
    cap = snap.capacity
    profiles = {0: _profile(snap)}
    before, steps, released = capacity_state(cap), _steps(profiles[0]), cap.released[0]
    with Trial(cap, profiles, NOW) as outer:
        with Trial(cap, profiles, NOW) as inner:
            inner.free(runs[2])
            inner.commit()
        assert cap.whole.tolist() == [0, 0, 8, 0]  # kept by the inner commit
        assert cap.logging  # the outer trial is still open
        assert outer.freed == []
    assert capacity_state(cap) == before
    assert cap.released[0] == released  # undone trials release nothing
    # the inner trial's profile change was committed, not undone: the owner of ``profiles`` made it
    assert _steps(profiles[0])[0] == steps[0] + 8_000.0
    check_invariants(cap)


def test_an_error_inside_a_trial_undoes_it_even_after_commit() -> None:
    snap, runs = _busy()
    cap = snap.capacity
    before = capacity_state(cap)
    with pytest.raises(RuntimeError, match="boom"), Trial(cap, {}, NOW) as t:
        t.free(runs[0])
        t.commit()
        raise RuntimeError("boom")
    assert capacity_state(cap) == before
    assert not cap.logging


def test_restoring_a_freed_victim_puts_it_back_and_out_of_the_trial() -> None:
    snap, runs = _busy()
    cap = snap.capacity
    profiles = {0: _profile(snap)}
    steps = _steps(profiles[0])
    with Trial(cap, profiles, NOW) as t:
        t.free(runs[0])
        t.free(runs[1])
        t.restore(runs[0])
        assert t.freed == [runs[1]]
        assert cap.whole.tolist() == [0, 8, 0, 0]
        assert _steps(profiles[0])[:2] == [steps[0] + 8_000.0, steps[1] + 8_000.0]
        t.commit()
    assert cap.whole.tolist() == [0, 8, 0, 0]
    check_invariants(cap)
