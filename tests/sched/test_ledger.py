"""The one between-cycle path (``sched.ledger``): exact usage whatever the owner's tick, the estimator's rule,
arrivals under grants, credit hold and charge, and the under-use rule (flag, reclaim, restore)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from builders import DAY_S, HOUR_S, a_grant, a_job, hgx_fleet, place, share, snapshot_of, tenant

from kfabric.model.reasons import ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched import ledger
from kfabric.sched.ledger import Ledger
from kfabric.sched.rules import su_hours

#: a half-life so long that decay is nothing over a test (usage is then plain SU-seconds)
NO_DECAY_S = 1e18


def _ledger(half_life_s: float = NO_DECAY_S, *grants: object) -> Ledger:
    snap = snapshot_of(hgx_fleet(), tenants=[tenant("a"), tenant("b")], grants=grants)  # type: ignore[arg-type]
    return Ledger(snap, half_life_s)


@pytest.mark.parametrize("tick_s", [1.0, 7.0, 60.0, 1000.0])
def test_usage_counts_every_second_held_whatever_the_tick(tick_s: float) -> None:
    """A run of 8 GPUs from t=30 to t=930 and one of 2 GPUs from t=100 to t=2000 count 8 x 900 + 2 x 1900 SU-s,
    whether the owner accrues every second or every 1000 s (the twin and the live controller tick differently)."""
    led = _ledger()
    events = [
        (30.0, "start", a_job("x").gpus(8).build(), place("p", share(0, *range(8)))),
        (100.0, "start", a_job("y").project("b").gpus(2).build(), place("p", share(1, 0, 1))),
        (930.0, "finish", "x", None),
        (2000.0, "finish", "y", None),
    ]
    now = 0.0
    for at, what, job, placement in events:
        while now + tick_s <= at:
            now += tick_s
            led.accrue(now)
        if what == "start":
            led.start(job, placement, at, borrowed=False)  # type: ignore[arg-type]
        else:
            led.finish(job, at)  # type: ignore[arg-type]
    led.accrue(2500.0)
    assert led.snap.usage_su["a"] == pytest.approx(8 * 900.0)
    assert led.snap.usage_su["b"] == pytest.approx(2 * 1900.0)
    assert not led.snap.running


def test_usage_decays_with_the_policy_half_life() -> None:
    led = _ledger(3600.0)
    led.snap.usage_su["a"] = 100.0
    led.accrue(3600.0)
    assert led.snap.usage_su["a"] == pytest.approx(50.0)
    led.accrue(7200.0)
    assert led.snap.usage_su["a"] == pytest.approx(25.0)


def test_finish_reports_what_the_run_held_and_adds_attained_service() -> None:
    led = _ledger()
    led.start(a_job("x").gpus(4).build(), place("p", share(0, 0, 1, 2, 3)), 100.0, borrowed=False)
    done = led.finish("x", 400.0)
    assert (done.held_s, done.gpu_s, done.su) == (300.0, 1200.0, 1200.0)  # H100: SU weight 1.0
    assert led.snap.attained_gpu_s["x"] == 1200.0
    assert led.snap.capacity.whole[0] == 8  # the GPUs are back


def test_a_rebuilt_run_counts_only_what_the_records_do_not_hold() -> None:
    """An owner rebuilding from records (usage to ``counted_to_s`` is in them) does not count that part twice."""
    led = _ledger()
    led.rebuild_usage([("a", 500.0, 8 * 500.0)], 600.0)
    led.start(a_job("x").gpus(8).build(), place("p", share(0, *range(8))), 0.0, borrowed=False, counted_to_s=500.0)
    led.finish("x", 1000.0)
    led.accrue(1000.0)
    assert led.snap.usage_su["a"] == pytest.approx(8 * 1000.0)


@pytest.mark.parametrize(
    ("outcome", "learns"),
    [
        (ledger.SUCCEEDED, True),
        (ledger.TIMEOUT, True),
        (ledger.FAILED, False),
        (ledger.PREEMPTED, False),
        (ledger.LOST, False),
        (ledger.CANCELLED, False),
    ],
)
def test_the_estimator_learns_from_natural_ends_and_time_limits_only(outcome: str, learns: bool) -> None:
    led = _ledger()
    job = a_job("x").limit_h(10).build()
    for _ in range(3):
        assert led.learn(job, outcome, 600.0) is learns
    assert led.snap.estimator.estimate(job) == (600.0 if learns else 10 * HOUR_S)


def test_arrivals_are_queued_or_refused_by_one_rule() -> None:
    day = DAY_S
    grants = [
        a_grant("g-a").project("a").between(0.0, 10 * day).build(),
        a_grant("g-b").project("b").between(5 * day, 20 * day).build(),
        a_grant("g-c").project("c").between(0.0, day).build(),
        a_grant("g-d").project("d").between(0.0, day).on_exhausted(OnExhausted.SCAVENGER).build(),
        a_grant("g-e").project("e").between(0.0, 10 * day).credit(0.0).build(),
        a_grant("g-f").project("f").between(0.0, 10 * day).max_job_h(2).build(),
    ]
    snap = snapshot_of(hgx_fleet(), grants=grants)
    now = 2 * day

    def verdict(project: str, **kw: object) -> tuple[bool, ReasonCode | None, bool, bool]:
        builder = a_job("j").project(project).limit_h(1)
        if kw.get("preemptible") is False:
            builder = builder.preemptible(False)
        got = ledger.arrival(snap, builder.build(), now)
        return got.queued, got.code, got.waits, got.demoted

    assert verdict("a") == (True, None, False, False)
    assert verdict("b") == (True, None, True, False)  # its grant starts later: it waits
    assert verdict("c") == (False, ReasonCode.GRANT_EXPIRED, False, False)
    assert verdict("d") == (True, None, False, True)  # demoted to scavenger by its program
    assert verdict("d", preemptible=False) == (False, ReasonCode.GRANT_EXPIRED, False, True)
    assert verdict("e") == (False, ReasonCode.CREDIT_EXHAUSTED, False, False)
    assert verdict("z") == (False, ReasonCode.NO_GRANT, False, False)
    job = a_job("long").project("f").limit_h(3).build()
    assert ledger.arrival(snap, job, now).code is ReasonCode.MAX_DURATION
    # no grants at all: no grant rule applies
    assert ledger.arrival(snapshot_of(hgx_fleet()), job, now).queued


def test_credit_is_held_for_the_time_limit_and_charged_by_use() -> None:
    job = a_job("x").gpus(8).limit_h(2).build()
    led = _ledger(NO_DECAY_S, a_grant("g").project("a").credit(100.0).build())
    need = su_hours(job, 1.0)
    assert need == 16.0
    grant, held = led.hold_credit(job, "H100", 1.0, guaranteed=False, now_s=0.0)
    assert (grant, held) == ("g", 16.0)
    assert led.snap.grants["g"].credit_left_su == 84.0
    assert led.release_credit("g", held, used_su=5.0) == 5.0
    assert led.snap.grants["g"].credit_left_su == 95.0
    # a use beyond the hold (a start delayed by a grace period) is charged up to the hold
    assert ledger.credit_charge(16.0, 20.0) == (16.0, 0.0)
    # the credit does not cover it: no hold (the core admitted it only as demoted scavenger work)
    assert ledger.credit_hold(job, 1.0, 10.0) == 0.0
    assert ledger.credit_hold(job, 1.0, None) == 0.0


@pytest.mark.parametrize(
    ("flagged", "pct", "since_s", "action"),
    [
        (False, 50.0, None, ledger.OK),
        (True, 50.0, 0.0, ledger.RESTORED),
        (False, 10.0, None, ledger.FLAGGED),
        (True, 10.0, 6 * DAY_S, ledger.STILL_FLAGGED),
        (True, 10.0, 0.0, ledger.RECLAIMED),
    ],
)
def test_the_underuse_rule(flagged: bool, pct: float, since_s: float | None, action: str) -> None:
    window = 7 * DAY_S
    assert ledger.underuse_action(flagged, since_s, pct, 30.0, 7 * DAY_S, window) == action


def test_an_idle_reservation_is_flagged_then_reclaimed_in_memory() -> None:
    """The twin's under-use: a reserved grant used below its floor is flagged, reclaimed a window later (it ends
    then); use that counts restores a flagged grant."""
    grant = replace(a_grant("g").project("a").reserved("H100", 8).build(), utilization_floor_pct=30.0)
    led = _ledger(NO_DECAY_S, grant)
    window = DAY_S
    assert led.check_underuse(HOUR_S, window) == [("g", 0.0, ledger.FLAGGED)]
    # half the reserved GPUs busy for a day: 50 % >= 30 %: restored
    led.start(a_job("x").gpus(4).build(), place("p", share(0, 0, 1, 2, 3)), HOUR_S, borrowed=False, guaranteed=True)
    led.finish("x", HOUR_S + window)
    got = led.check_underuse(HOUR_S + window, window)
    assert got[0][2] == ledger.RESTORED and got[0][1] == pytest.approx(50.0)
    t = HOUR_S + window + HOUR_S
    assert led.check_underuse(t, window)[0][2] == ledger.OK  # the last day still holds 23 h of that use
    t += window
    assert led.check_underuse(t, window)[0][2] == ledger.FLAGGED
    assert led.check_underuse(t + window / 2, window)[0][2] == ledger.STILL_FLAGGED
    assert led.check_underuse(t + window, window)[0][2] == ledger.RECLAIMED
    assert led.snap.grants["g"].end_s == t + window
    assert led.check_underuse(t + 2 * window, window) == []  # ended: no longer checked


def test_utilization_of_a_window_clips_to_the_grant_start() -> None:
    assert ledger.utilization_pct(8 * 3600.0, 8, 0.0, 3600.0, 7 * DAY_S) == pytest.approx(100.0)
    assert ledger.window_gpu_s(100.0, 0.0, 100.0, 50.0, 200.0) == pytest.approx(50.0)
    assert ledger.utilization_pct(1.0, 0, 0.0, 10.0, 10.0) == 0.0
    assert math.isinf(ledger.next_grant_change(snapshot_of(hgx_fleet()), 0.0))
