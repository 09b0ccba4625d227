"""One scheduling cycle end to end: constraints and their reasons, backfill, preemption, quota, purity."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from builders import (
    DAY_S,
    HOUR_S,
    a_fleet,
    a_grant,
    a_job,
    apply_decision,
    check_invariants,
    check_power,
    decision_key,
    hgx_fleet,
    place,
    queue_of,
    run,
    share,
    snapshot_of,
    snapshot_state,
    tenant,
)

import kfabric
from kfabric.model import Classification, Fleet, Job, MinTopology, PriorityClass, Sharing
from kfabric.model.decision import Decision, Preemption, Reservation
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.sovereignty import clearance_rule
from kfabric.model.tenancy import OnExhausted
from kfabric.sched import preemption
from kfabric.sched.cycle import cycle
from kfabric.sched.memo import CycleMemo
from kfabric.sched.policy import Policy
from kfabric.sched.snapshot import GrantState, Snapshot

NOW = 100 * DAY_S
FIFO = Policy(ordering="fifo")
HIGH, NORMAL, LOW = PriorityClass.HIGH, PriorityClass.NORMAL, PriorityClass.LOW


def decide(
    snap: Snapshot, *jobs: Job, policy: Policy = FIFO, now: float = NOW, memo: CycleMemo | None = None
) -> Decision:
    """Run one cycle and check what every cycle must guarantee: the snapshot is left exactly as found, the
    same inputs give the same decision, every job is either admitted or has a reason with a message."""
    q = queue_of(snap, *jobs)
    before = snapshot_state(snap)
    decision = cycle(snap, q, policy, now, memo=memo)
    assert snapshot_state(snap) == before, "a cycle must leave the snapshot as it found it"
    assert decision_key(cycle(snap, q, policy, now, memo=memo)) == decision_key(decision), "same inputs, same decision"
    admitted = [a.job_id for a in decision.admissions]
    assert len(set(admitted)) == len(admitted)
    assert set(admitted).isdisjoint(decision.pending)
    assert set(admitted) | set(decision.pending) == {j.id for j in jobs}
    assert len(decision.pending) == len(jobs) - len(admitted)
    for job_id, reason in decision.pending.items():
        assert isinstance(reason, PendingReason) and reason.message.strip(), job_id
    # applying the decision (to a copy) keeps capacity consistent and within power caps; the compiled build's
    # classes cannot be deep-copied, so that check runs on the Python sources (the suite's first pass)
    if kfabric.BUILD == "native":
        return decision
    applied = copy.deepcopy(snap)
    apply_decision(applied, queue_of(applied, *jobs), decision)
    check_invariants(applied.capacity)
    check_power(applied.capacity)
    return decision


def admitted(d: Decision) -> dict[str, list[tuple[int, tuple[int, ...]]]]:
    return {a.job_id: [(s.node, s.gpus) for s in a.placement.shares] for a in d.admissions}


def pools_of(d: Decision) -> dict[str, str]:
    return {a.job_id: a.placement.pool for a in d.admissions}


def codes(d: Decision) -> dict[str, ReasonCode]:
    return {job_id: r.code for job_id, r in d.pending.items()}


def full(pool: str, node: int, gpus: int = 8) -> object:
    return place(pool, share(node, *range(gpus)))


def running(
    snap: Snapshot,
    job_id: str,
    pool: str,
    node: int,
    gpus: tuple[int, ...],
    started_h_ago: float,
    limit_h: float = 24.0,
    priority: PriorityClass = NORMAL,
    project: str = "a",
    borrowed: bool = False,
    preemptible: bool = True,
    cpu: int = 0,
) -> None:
    job = (
        a_job(job_id)
        .project(project)
        .gpus(len(gpus))
        .limit_h(limit_h)
        .priority(priority)
        .preemptible(preemptible)
        .build()
    )
    run(snap, job, place(pool, share(node, *gpus, cpu=cpu)), NOW - started_h_ago * HOUR_S, borrowed)


EIGHT = tuple(range(8))


# ---- sovereignty -------------------------------------------------------------------------------------------------
def _sovereign_fleet(with_gov: bool = True) -> Fleet:
    b = (
        a_fleet()
        .site("factory", Classification.INTERNAL, certification="private-factory")
        .site("cloud", Classification.CONFIDENTIAL, certification="domestic-cloud")
    )
    if with_gov:
        b.site("gov", Classification.RESTRICTED, certification="government-operated")
    b.pool("factory-h100", site="factory", nodes=2, racks_per_unit=1)
    b.pool("cloud-h100", site="cloud", nodes=2, racks_per_unit=1)
    if with_gov:
        b.pool("gov-h100", site="gov", nodes=2, racks_per_unit=1)
    return b.build()


@pytest.mark.parametrize(
    ("classification", "pool", "site", "cert", "clearance"),
    [
        (Classification.PUBLIC, "factory-h100", "factory", "private-factory", Classification.INTERNAL),
        (Classification.INTERNAL, "factory-h100", "factory", "private-factory", Classification.INTERNAL),
        (Classification.CONFIDENTIAL, "cloud-h100", "cloud", "domestic-cloud", Classification.CONFIDENTIAL),
        (Classification.RESTRICTED, "gov-h100", "gov", "government-operated", Classification.RESTRICTED),
    ],
    ids=["public", "internal", "confidential", "restricted"],
)
def test_a_job_runs_only_on_a_site_cleared_for_its_data(
    classification: Classification, pool: str, site: str, cert: str, clearance: Classification
) -> None:
    snap = snapshot_of(_sovereign_fleet())
    d = decide(snap, a_job("j").gpus(8).classification(classification).build())
    (adm,) = d.admissions
    assert adm.placement.pool == pool
    assert adm.rule == clearance_rule(site, cert, clearance, classification)
    assert adm.rule.startswith(f"site {site} ({cert}) is cleared up to {clearance.label}; job is")


def test_restricted_job_waits_for_the_restricted_site_rather_than_run_elsewhere() -> None:
    snap = snapshot_of(_sovereign_fleet())
    running(snap, "r0", "gov-h100", 4, EIGHT, 1.0, limit_h=2.0)
    running(snap, "r1", "gov-h100", 5, EIGHT, 1.0, limit_h=3.0)
    d = decide(snap, a_job("secret").gpus(8).classification(Classification.RESTRICTED).build())
    assert d.admissions == ()
    assert d.reservations == (Reservation("secret", "gov-h100", NOW + HOUR_S),)
    assert d.pending["secret"].code == ReasonCode.RESERVATION


def test_sovereignty_reason_when_no_site_is_cleared() -> None:
    snap = snapshot_of(_sovereign_fleet(with_gov=False))
    d = decide(snap, a_job("secret").classification(Classification.RESTRICTED).build(), a_job("open").build())
    assert pools_of(d) == {"open": "factory-h100"}
    assert d.pending["secret"] == PendingReason(
        ReasonCode.SOVEREIGNTY,
        "restricted data may only run on sites cleared for it, and no site with acceptable GPUs is; "
        "ask for a site with that clearance or lower the data classification",
    )


# ---- GPU models, dedicated pools, topology, online ----------------------------------------------------------
def _two_models() -> Fleet:
    return (
        a_fleet()
        .owner("acme")
        .pool("b200", model="B200", nodes=2, racks_per_unit=1)
        .pool("h100", model="H100", nodes=2, racks_per_unit=1)
        .pool("acme-b200", model="B200", nodes=1, racks_per_unit=1, owner="acme", sharing=Sharing.DEDICATED)
        .build()
    )


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (a_job("j").gpus(4).models("B200").build(), "b200"),
        (a_job("j").gpus(4).models("H100").build(), "h100"),
        (a_job("j").gpus(4).models("B200", "H100").build(), "h100"),  # the cheaper model for equal work
        (a_job("j").gpus(4).build(), "h100"),
    ],
    ids=["b200-only", "h100-only", "either", "any"],
)
def test_gpu_model_list(job: Job, expected: str) -> None:
    snap = snapshot_of(_two_models(), tenants=[tenant("a")])
    assert pools_of(decide(snap, job)) == {"j": expected}


def test_gpu_model_reason_when_no_pool_has_the_model() -> None:
    snap = snapshot_of(_two_models())
    d = decide(snap, a_job("j").models("H200", "GB200").build())
    assert d.pending["j"] == PendingReason(ReasonCode.GPU_MODEL, "no pool in the fleet has GPU model GB200, H200")


def test_dedicated_pool_serves_only_its_owner() -> None:
    fleet = (
        a_fleet()
        .owner("acme")
        .pool("acme-b200", model="B200", nodes=1, racks_per_unit=1, owner="acme", sharing=Sharing.DEDICATED)
        .build()
    )
    snap = snapshot_of(fleet, tenants=[tenant("acme-team", affiliation="acme"), tenant("x")])
    d = decide(snap, a_job("mine").project("acme-team").build(), a_job("theirs").project("x").build())
    assert pools_of(d) == {"mine": "acme-b200"}
    assert d.admissions[0].borrowed is False
    assert d.pending["theirs"] == PendingReason(
        ReasonCode.GPU_MODEL,
        "the only pools with acceptable GPUs are dedicated to their owners; choose another GPU model",
    )


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            a_job("j").gpus(64).build(),
            "needs 64 GPUs in one pool (one GPU model, one cluster) and the largest eligible pool has 32; "
            "ask for fewer GPUs",
        ),
        (
            a_job("j").gpus(32).topology(MinTopology.RACK).build(),
            "needs 32 GPUs within one rack domain, and no eligible pool has a domain that large; "
            "relax --min-topology or ask for fewer GPUs",
        ),
        (
            a_job("j").gpus(16).topology(MinTopology.NVLINK).build(),
            "needs 16 GPUs within one nvlink domain, and no eligible pool has a domain that large; "
            "relax --min-topology or ask for fewer GPUs",
        ),
    ],
    ids=["too-big", "rack", "nvlink"],
)
def test_topology_reason(job: Job, message: str) -> None:
    snap = snapshot_of(hgx_fleet())
    assert decide(snap, job).pending["j"] == PendingReason(ReasonCode.TOPOLOGY, message)


def test_not_online_reason_before_the_pool_comes_online() -> None:
    fleet = hgx_fleet(online=date(2030, 1, 1))
    snap = snapshot_of(fleet, online_at_s=datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    assert decide(snap, a_job("j").build()).pending["j"] == PendingReason(
        ReasonCode.NOT_ONLINE, "no pool that can run this job is online yet (phased roll-out)"
    )
    later = snapshot_of(fleet, online_at_s=datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    assert len(decide(later, a_job("j").build()).admissions) == 1


# ---- power caps --------------------------------------------------------------------------------------------------
def test_site_power_cap() -> None:
    # 10 kW per 8-GPU node = 1.25 kW per GPU; a 30 kW cap holds 24 GPUs
    fleet = a_fleet().site("small", power_cap_mw=0.03).pool("p", nodes=4, node_kw=10.0).build()
    snap = snapshot_of(fleet)
    running(snap, "r0", "p", 0, EIGHT, 1.0)
    running(snap, "r1", "p", 1, EIGHT, 1.0)
    d = decide(snap, a_job("fits").gpus(8).build(), a_job("over").gpus(16).build(), a_job("next").gpus(8).build())
    assert pools_of(d) == {"fits": "p"}
    over = PendingReason(ReasonCode.POWER_CAP, "site small is at its power cap (0.03 MW); waiting for power headroom")
    assert d.pending == {"over": over, "next": over}


def test_power_cap_sends_work_to_another_site() -> None:
    fleet = (
        a_fleet()
        .site("small", power_cap_mw=0.005)
        .site("big")
        .pool("small-p", site="small", nodes=2, racks_per_unit=1)
        .pool("big-p", site="big", nodes=2, racks_per_unit=1)
        .build()
    )
    snap = snapshot_of(fleet)
    d = decide(snap, a_job("four").gpus(4).build(), a_job("eight").gpus(8).build())
    assert pools_of(d) == {"four": "small-p", "eight": "big-p"}


# ---- grants and program rules ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grants", "job", "expected"),
    [
        (
            [a_grant("g-b").project("b").credit(10).build()],
            a_job("j").build(),
            PendingReason(ReasonCode.NO_GRANT, "project a has no grant that covers this job; apply to a program"),
        ),
        (
            [a_grant("g-a").between(NOW + 1, NOW + DAY_S).build()],
            a_job("j").build(),
            PendingReason(ReasonCode.NO_GRANT, "project a has no grant that covers this job; apply to a program"),
        ),
        (
            [a_grant("g-a").credit(10).max_job_h(24).build()],
            a_job("j").limit_h(48).build(),
            PendingReason(
                ReasonCode.MAX_DURATION, "time limit 48 h exceeds the program's maximum of 24 h; lower --time"
            ),
        ),
        (
            [a_grant("g-a").credit(10).between(0, NOW).build()],
            a_job("j").build(),
            PendingReason(ReasonCode.GRANT_EXPIRED, "grant g-a has expired; ask the program for a renewal"),
        ),
        (
            [a_grant("g-a").credit(0).build()],
            a_job("j").build(),
            PendingReason(ReasonCode.CREDIT_EXHAUSTED, "grant g-a has no service-unit credit left; top it up"),
        ),
        (
            [
                a_grant("g-old").credit(10).between(0, NOW).build(),
                a_grant("g-new").credit(10).between(10, 2 * NOW).build(),
            ],
            a_job("j").grant("g-old").build(),
            PendingReason(ReasonCode.GRANT_EXPIRED, "grant g-old has expired; ask the program for a renewal"),
        ),
    ],
    ids=["no-grant", "not-started", "max-duration", "expired", "credit-exhausted", "named-expired-grant"],
)
def test_grant_rules(grants: list[GrantState], job: Job, expected: PendingReason) -> None:
    snap = snapshot_of(hgx_fleet(), grants=grants)
    d = decide(snap, job)
    assert d.admissions == ()
    assert d.pending["j"] == expected


@pytest.mark.parametrize(
    "grants",
    [
        [],
        [a_grant("g-a").credit(24).build()],  # exactly its time limit (24 h) at 1 GPU x 1 SU
        [a_grant("g-a").credit(24).max_job_h(24).build()],
        [a_grant("g-old").credit(10).between(0, NOW).build(), a_grant("g-new").credit(24).between(10, 2 * NOW).build()],
    ],
    ids=["no-grants-at-all", "credit-left", "within-max-duration", "latest-grant"],
)
def test_grant_rules_admit(grants: list[GrantState]) -> None:
    snap = snapshot_of(hgx_fleet(), grants=grants)
    d = decide(snap, a_job("j").limit_h(24).build())
    assert [a.job_id for a in d.admissions] == ["j"]
    assert d.admissions[0].borrowed is False


@pytest.mark.parametrize(
    "grant",
    [
        a_grant("g-a").credit(0).on_exhausted(OnExhausted.SCAVENGER).build(),
        a_grant("g-a").credit(10).between(0, NOW).on_exhausted(OnExhausted.SCAVENGER).build(),
    ],
    ids=["exhausted", "expired"],
)
def test_exhausted_grant_demotes_to_scavenger(grant: GrantState) -> None:
    snap = snapshot_of(hgx_fleet(), grants=[grant])
    d = decide(snap, a_job("j").build(), a_job("firm").preemptible(False).build())
    assert [(a.job_id, a.borrowed) for a in d.admissions] == [("j", True)]
    assert d.pending["firm"].code == ReasonCode.QUOTA


# ---- backfill ----------------------------------------------------------------------------------------------------
def _backfill_snapshot() -> Snapshot:
    """16 GPUs on two nodes of one rack. Node 0 runs 8 GPUs until now + 2 h; node 1 runs 4 GPUs until now + 5 h;
    4 GPUs (node 1, GPUs 4-7) are free now."""
    snap = snapshot_of(hgx_fleet(nodes=2, racks_per_unit=1))
    running(snap, "r-8", "p", 0, EIGHT, 1.0, limit_h=3.0)
    running(snap, "r-4", "p", 1, (0, 1, 2, 3), 1.0, limit_h=6.0)
    return snap


def _reserved(job_id: str, start_s: float) -> PendingReason:
    return PendingReason(
        ReasonCode.RESERVATION,
        f"capacity is reserved for it on pool p; expected to start by t={start_s:.0f}s at the latest "
        "(running jobs' time limits bound it)",
        expected_start_s=start_s,
    )


@pytest.mark.parametrize(
    ("head_gpus", "expected_start"),
    [(16, NOW + 5 * HOUR_S), (12, NOW + 2 * HOUR_S), (8, NOW + 2 * HOUR_S)],
    ids=["16-needs-both-ends", "12-first-end-frees-enough", "8-first-end"],
)
def test_easy_head_reservation_is_the_earliest_end_that_frees_enough(head_gpus: int, expected_start: float) -> None:
    snap = _backfill_snapshot()
    d = decide(snap, a_job("head").gpus(head_gpus).limit_h(4).submitted(1).build())
    assert d.reservations == (Reservation("head", "p", expected_start),)
    assert d.pending["head"] == _reserved("head", expected_start)


@pytest.mark.parametrize(
    ("short", "long"),
    [
        (
            a_job("short").gpus(4).limit_h(1).submitted(3).build(),
            a_job("long").gpus(2).limit_h(10).submitted(2).build(),
        ),
        (
            a_job("short").gpus(4).limit_h(1).submitted(3).build(),
            a_job("long").gpus(4).limit_h(10).submitted(2).build(),
        ),
    ],
    ids=["different-shapes", "same-shape"],
)
def test_easy_backfills_short_work_and_holds_back_work_that_would_delay_the_reservation(short: Job, long: Job) -> None:
    snap = _backfill_snapshot()
    head = a_job("head").gpus(16).limit_h(4).submitted(1).build()
    d = decide(snap, head, long, short)
    assert admitted(d) == {"short": [(1, (4, 5, 6, 7))]}
    assert d.admissions[0].backfilled is True
    assert d.admissions[0].start_at_s == NOW
    assert d.reservations == (Reservation("head", "p", NOW + 5 * HOUR_S),)
    assert d.pending["long"].code == ReasonCode.PRIORITY


def test_easy_reserves_for_the_head_only() -> None:
    snap = _backfill_snapshot()
    head = a_job("head").gpus(16).limit_h(4).submitted(1).build()
    second = a_job("second").gpus(8).limit_h(1).submitted(2).build()
    d = decide(snap, head, second)
    assert d.reservations == (Reservation("head", "p", NOW + 5 * HOUR_S),)
    assert d.pending["second"].code == ReasonCode.PRIORITY
    assert d.pending["second"].expected_start_s is None


def test_conservative_reserves_for_every_blocked_job_without_delaying_earlier_ones() -> None:
    snap = _backfill_snapshot()
    head = a_job("head").gpus(16).limit_h(4).submitted(1).build()
    second = a_job("second").gpus(8).limit_h(1).submitted(2).build()  # fits between now + 2 h and the head
    third = a_job("third").gpus(12).limit_h(4).submitted(3).build()  # only after the head's 4 h
    d = decide(snap, head, second, third, policy=FIFO.with_(backfill="conservative"))
    assert d.reservations == (
        Reservation("head", "p", NOW + 5 * HOUR_S),
        Reservation("second", "p", NOW + 2 * HOUR_S),
        Reservation("third", "p", NOW + 9 * HOUR_S),
    )
    assert d.pending["third"] == _reserved("third", NOW + 9 * HOUR_S)


def test_no_backfill_blocks_later_jobs_on_the_same_pools() -> None:
    fleet = a_fleet().pool("p", nodes=2, racks_per_unit=1).pool("q", model="B200", nodes=1, racks_per_unit=1).build()
    snap = snapshot_of(fleet)
    running(snap, "r-8", "p", 0, EIGHT, 1.0, limit_h=3.0)
    running(snap, "r-4", "p", 1, (0, 1, 2, 3), 1.0, limit_h=6.0)
    head = a_job("head").gpus(16).models("H100").submitted(1).build()
    small_h100 = a_job("small-h100").gpus(4).models("H100").submitted(2).build()
    small_any = a_job("small-any").gpus(2).submitted(3).build()
    d = decide(snap, head, small_h100, small_any, policy=FIFO.with_(backfill="none"))
    assert pools_of(d) == {"small-any": "q"}  # pool p is blocked behind the head; q is not
    assert d.reservations == ()
    assert d.pending["head"] == PendingReason(
        ReasonCode.RESOURCES,
        "waiting for 16 free GPU(s) of H100 (min topology: any); 4 free now",
    )
    assert d.pending["small-h100"] == PendingReason(
        ReasonCode.PRIORITY,
        "waiting behind jobs ahead of it that cannot start yet on the same pools (backfill is off)",
    )
    # with EASY the small H100 job backfills instead
    d = decide(snap, head, small_h100, small_any, policy=FIFO)
    assert pools_of(d) == {"small-h100": "p", "small-any": "q"}


def test_jobs_of_a_failed_class_share_its_reason() -> None:
    snap = _backfill_snapshot()
    jobs = [a_job(f"big{i}").gpus(16).limit_h(4).submitted(i).build() for i in range(3)]
    d = decide(snap, *jobs)
    assert d.reservations == (Reservation("big0", "p", NOW + 5 * HOUR_S),)
    same_shape = PendingReason(
        ReasonCode.PRIORITY,
        "waiting behind higher-priority jobs of the same shape that hold reservations on the capacity",
    )
    assert d.pending["big1"] == d.pending["big2"] == same_shape


def test_cycle_limit_reason_for_jobs_not_examined() -> None:
    snap = snapshot_of(hgx_fleet())
    d = decide(
        snap,
        a_job("a").gpus(1).submitted(1).build(),
        a_job("b").gpus(2).submitted(2).build(),
        policy=FIFO.with_(bf_max_job_test=1),
    )
    assert pools_of(d) == {"a": "p"}
    assert d.pending["b"] == PendingReason(
        ReasonCode.CYCLE_LIMIT, "not examined in this cycle (the scheduler's per-cycle bound); retried next cycle"
    )


# ---- preemption by priority class ------------------------------------------------------------------------------
def _one_node() -> Snapshot:
    """One 8-GPU node: a NORMAL job on GPUs 0-3 (started 2 h ago) and a LOW job on GPUs 4-7 (1 h ago)."""
    snap = snapshot_of(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    running(snap, "v-normal", "p", 0, (0, 1, 2, 3), 2.0, priority=NORMAL)
    running(snap, "v-low", "p", 0, (4, 5, 6, 7), 1.0, priority=LOW)
    return snap


def _edit(snap: Snapshot, job_id: str, **changes: object) -> None:
    """Change a running job's record (start time, checkpoint, borrowed) or its job (e.g. preemptible): it
    leaves and starts again with the changes, so the snapshot's indexes follow."""
    r = snap.finish(job_id)
    job = replace(r.job, **{k: v for k, v in changes.items() if k == "preemptible"})
    start = float(changes.get("start_s", r.start_s))  # type: ignore[arg-type]
    snap.start(job, r.placement, start, bool(changes.get("borrowed", r.borrowed)), r.guaranteed)
    snap.checkpointed(job_id, float(changes.get("last_checkpoint_s", r.last_checkpoint_s)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edits", "victim", "gpus"),
    [
        ({}, "v-low", (4, 5, 6, 7)),  # least lost work: 4 GPU-h against 8 GPU-h
        ({"v-normal": {"last_checkpoint_s": NOW - 600.0}}, "v-normal", (0, 1, 2, 3)),  # checkpointed 10 min ago
        ({"v-normal": {"borrowed": True}}, "v-normal", (0, 1, 2, 3)),  # borrowed work first
        ({"v-low": {"start_s": NOW - 300.0, "last_checkpoint_s": NOW - 300.0}}, "v-normal", (0, 1, 2, 3)),  # min run
        ({"v-low": {"preemptible": False}}, "v-normal", (0, 1, 2, 3)),
    ],
    ids=["least-lost-work", "checkpoint", "borrowed-first", "min-run-time", "non-preemptible"],
)
def test_priority_preemption_picks_the_cheapest_victim(
    edits: dict[str, dict[str, object]], victim: str, gpus: tuple[int, ...]
) -> None:
    snap = _one_node()
    for job_id, changes in edits.items():
        _edit(snap, job_id, **changes)
    d = decide(snap, a_job("hi").gpus(4).priority(HIGH).build())
    reason = "quota reclaim" if snap.running[victim].borrowed else "higher priority class"
    assert d.preemptions == (Preemption(victim, "hi", reason, 60.0),)
    assert admitted(d) == {"hi": [(0, gpus)]}
    assert d.admissions[0].start_at_s == NOW + 60.0


def test_preemption_takes_as_many_victims_as_the_gang_needs() -> None:
    snap = _one_node()
    d = decide(snap, a_job("hi").gpus(8).priority(HIGH).build(), policy=FIFO.with_(grace_s=0.0))
    assert d.preemptions == (
        Preemption("v-low", "hi", "higher priority class", 0.0),
        Preemption("v-normal", "hi", "higher priority class", 0.0),
    )
    assert admitted(d) == {"hi": [(0, EIGHT)]}
    assert d.admissions[0].start_at_s == NOW


@pytest.mark.parametrize(
    ("job", "policy", "edits"),
    [
        (a_job("p").gpus(4).priority(LOW).build(), FIFO, {}),  # nothing below LOW
        (a_job("p").gpus(4).priority(HIGH).build(), FIFO.with_(preempt_by_priority=False), {}),
        (a_job("p").gpus(4).priority(PriorityClass.SCAVENGER).build(), FIFO, {}),
        (
            a_job("p").gpus(4).priority(HIGH).build(),
            FIFO,
            {"v-low": {"start_s": NOW - 60.0}, "v-normal": {"start_s": NOW - 60.0}},
        ),  # both younger than the minimum run time
        (a_job("p").gpus(4).priority(HIGH).build(), FIFO.with_(max_preemption_attempts=0), {}),
    ],
    ids=["lowest-class", "disabled", "scavenger", "all-too-young", "no-attempts"],
)
def test_no_preemption(job: Job, policy: Policy, edits: dict[str, dict[str, object]]) -> None:
    snap = _one_node()
    for job_id, changes in edits.items():
        _edit(snap, job_id, **changes)
    d = decide(snap, job, policy=policy)
    assert d.preemptions == () and d.admissions == ()
    assert d.pending["p"].code == ReasonCode.RESERVATION


def test_normal_job_preempts_only_lower_classes() -> None:
    snap = _one_node()
    d = decide(snap, a_job("n").gpus(8).priority(NORMAL).build())
    assert d.preemptions == ()  # v-low alone frees 4 GPUs: not enough, and v-normal is not lower
    d = decide(snap, a_job("n").gpus(4).priority(NORMAL).build())
    assert [p.job_id for p in d.preemptions] == ["v-low"]


def test_a_preempted_victim_keeps_its_host_resources_accounted() -> None:
    # the victim holds GPUs 4-7 and most of the CPU; the new job fits on GPUs 0-3 only once the CPU is freed
    snap = snapshot_of(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1, cpu_milli=100_000))
    running(snap, "victim", "p", 0, (4, 5, 6, 7), 1.0, priority=LOW, cpu=80_000)
    d = decide(snap, a_job("hi").gpus(4).cpu(60_000).priority(HIGH).build())
    assert [p.job_id for p in d.preemptions] == ["victim"]
    assert admitted(d) == {"hi": [(0, (0, 1, 2, 3))]}


def test_one_victim_is_not_preempted_twice() -> None:
    snap = _one_node()
    d = decide(snap, a_job("h1").gpus(4).priority(HIGH).build(), a_job("h2").gpus(4).priority(HIGH).cpu(1).build())
    assert [(p.job_id, p.by_job) for p in d.preemptions] == [("v-low", "h1"), ("v-normal", "h2")]
    assert admitted(d) == {"h1": [(0, (4, 5, 6, 7))], "h2": [(0, (0, 1, 2, 3))]}


# ---- preemption for gangs: victims chosen by whole node --------------------------------------------------------
def _two_racks(ages_h: dict[int, float]) -> Snapshot:
    """Two racks of two 8-GPU nodes, one unit each. Every node runs two LOW 4-GPU jobs, ``n{node}a`` and
    ``n{node}b``, started ``ages_h[node]`` hours ago (default 2 h) and never checkpointed."""
    snap = snapshot_of(hgx_fleet(nodes=4, nodes_per_rack=2, racks_per_unit=1))
    for node in range(4):
        age = ages_h.get(node, 2.0)
        running(snap, f"n{node}a", "p", node, (0, 1, 2, 3), age, priority=LOW)
        running(snap, f"n{node}b", "p", node, (4, 5, 6, 7), age, priority=LOW)
    return snap


@pytest.mark.parametrize(
    ("ages_h", "edits", "nodes"),
    [
        ({0: 3.0, 1: 3.0}, {}, (2, 3)),  # rack 1 loses less work
        ({2: 3.0, 3: 3.0}, {}, (0, 1)),  # rack 0 loses less work
        ({0: 3.0, 1: 3.0}, {"n3b": {"preemptible": False}}, (0, 1)),  # rack 1 cannot be emptied
        ({0: 3.0, 1: 3.0}, {"n2a": {"start_s": NOW - 60.0}}, (0, 1)),  # rack 1 holds work under the minimum run time
        ({}, {"n1a": {"last_checkpoint_s": NOW - 60.0}, "n1b": {"last_checkpoint_s": NOW - 60.0}}, (0, 1)),
        ({0: 3.0, 1: 3.0}, {f"n{i}{h}": {"borrowed": True} for i in (0, 1) for h in "ab"}, (0, 1)),  # borrowed first
    ],
    ids=["cheaper-rack-1", "cheaper-rack-0", "non-preemptible", "min-run-time", "checkpointed", "borrowed-first"],
)
def test_a_gang_frees_the_cheapest_whole_nodes_of_one_domain(
    ages_h: dict[int, float], edits: dict[str, dict[str, object]], nodes: tuple[int, int]
) -> None:
    snap = _two_racks(ages_h)
    for job_id, changes in edits.items():
        _edit(snap, job_id, **changes)
    d = decide(snap, a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH).build())
    assert sorted(p.job_id for p in d.preemptions) == sorted(f"n{n}{h}" for n in nodes for h in "ab")
    assert sorted(node for node, _ in admitted(d)["gang"]) == list(nodes)


def test_a_gang_uses_free_nodes_and_keeps_the_victims_it_does_not_need() -> None:
    # node 0 free, node 1 busy; a 12-GPU gang (8 + 4) needs node 0 and half of node 1
    snap = snapshot_of(hgx_fleet(nodes=2, nodes_per_rack=2, racks_per_unit=1))
    running(snap, "lo-a", "p", 1, (0, 1, 2, 3), 2.0, priority=LOW)
    running(snap, "lo-b", "p", 1, (4, 5, 6, 7), 2.0, priority=LOW)
    d = decide(snap, a_job("gang").gpus(12).topology(MinTopology.RACK).priority(HIGH).build())
    assert [p.job_id for p in d.preemptions] == ["lo-a"]
    assert admitted(d) == {"gang": [(0, EIGHT), (1, (0, 1, 2, 3))]}


def test_a_gang_may_displace_more_victims_than_a_single_node_job_considers() -> None:
    # 40 nodes, each running eight LOW 1-GPU jobs: a 320-GPU job needs all 320 of them
    snap = snapshot_of(hgx_fleet(nodes=40, nodes_per_rack=4, racks_per_unit=10))
    for node in range(40):
        for g in range(8):
            running(snap, f"v{node:02d}-{g}", "p", node, (g,), 2.0, priority=LOW)
    d = decide(snap, a_job("big").gpus(320).priority(HIGH).build())
    assert len(d.preemptions) == 320 and {p.by_job for p in d.preemptions} == {"big"}
    assert len(admitted(d)["big"]) == 40


def test_a_shape_with_part_nodes_frees_part_nodes() -> None:
    # 2 nodes x 4 GPUs: each node keeps its non-preemptible half, the LOW halves make room
    snap = snapshot_of(hgx_fleet(nodes=2, nodes_per_rack=2, racks_per_unit=1))
    for node in range(2):
        running(snap, f"firm{node}", "p", node, (0, 1, 2, 3), 2.0, preemptible=False)
        running(snap, f"low{node}", "p", node, (4, 5, 6, 7), 2.0, priority=LOW)
    d = decide(snap, a_job("gang").shape(2, 4).topology(MinTopology.RACK).priority(HIGH).build())
    assert sorted(p.job_id for p in d.preemptions) == ["low0", "low1"]
    assert admitted(d) == {"gang": [(0, (4, 5, 6, 7)), (1, (4, 5, 6, 7))]}


def test_a_gang_that_no_domain_can_hold_preempts_nothing() -> None:
    snap = _two_racks({})
    _edit(snap, "n0a", preemptible=False)
    _edit(snap, "n3b", preemptible=False)
    d = decide(snap, a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH).build())
    assert d.preemptions == () and d.admissions == ()
    assert codes(d) == {"gang": ReasonCode.RESERVATION}  # it waits for the running work to end instead


def _blocked_racks() -> Snapshot:
    """:func:`_two_racks` where no rack can be emptied now: one non-preemptible job on each."""
    snap = _two_racks({})
    _edit(snap, "n0a", preemptible=False)
    _edit(snap, "n3b", preemptible=False)
    return snap


def _rack_0_blocked(rack_1_age_h: float = 2.0) -> Snapshot:
    """Rack 0 blocked by a non-preemptible job; rack 1's work started ``rack_1_age_h`` hours ago."""
    snap = _two_racks({2: rack_1_age_h, 3: rack_1_age_h})
    _edit(snap, "n0a", preemptible=False)
    return snap


def _young_rack_1() -> Snapshot:
    return _rack_0_blocked(5 / 60)  # under the minimum run time


SERVICE = FIFO.with_(preempt_by_priority=False, preempt_by_service=True, las_thresholds_gpu_s=(40_000.0,))


def _every_node_blocked() -> Snapshot:
    """:func:`_two_racks` with a non-preemptible job on every node: each rack is two nodes short."""
    snap = _two_racks({})
    for node in range(4):
        _edit(snap, f"n{node}a", preemptible=False)
    return snap


def _node_2_down() -> Snapshot:
    snap = _blocked_racks()
    _edit(snap, "n3b", preemptible=True)
    snap.capacity.set_up(2, False)
    return snap


@pytest.mark.python_only
@pytest.mark.parametrize(
    ("setup", "change", "later_s", "policy", "admits"),
    [
        (_blocked_racks, lambda s: None, 60.0, FIFO, False),  # nothing changed: the remembered miss answers
        (_blocked_racks, lambda s: s.finish("n3b"), 60.0, FIFO, True),  # the blocker ended
        (_young_rack_1, lambda s: None, 60.0, FIFO, False),  # still under the minimum run time
        (_young_rack_1, lambda s: None, 300.0, FIFO, True),  # old enough now
        (_node_2_down, lambda s: None, 60.0, FIFO, False),
        (_node_2_down, lambda s: s.capacity.set_up(2, True), 60.0, FIFO, True),  # the node came back
        (_rack_0_blocked, lambda s: None, 60.0, SERVICE, False),  # rack 1's jobs: 29,040 GPU-s each
        (_rack_0_blocked, lambda s: None, 3_000.0, SERVICE, True),  # 40,800 GPU-s: past the threshold
        (_every_node_blocked, lambda s: s.finish("n0a"), 60.0, FIFO, False),  # rack 0 still one node short
        (_every_node_blocked, lambda s: (s.finish("n0a"), s.finish("n1a")), 60.0, FIFO, True),
    ],
    ids=[
        *("unchanged", "blocker-ended", "still-young", "matured", "node-down", "node-up", "low-service", "served"),
        *("one-of-two-ended", "two-of-two-ended"),
    ],
)
def test_a_remembered_gang_miss_answers_as_a_fresh_search_would(
    setup: Callable[[], Snapshot],
    change: Callable[[Snapshot], object],
    later_s: float,
    policy: Policy,
    admits: bool,
) -> None:
    job = a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH if policy is FIFO else NORMAL).build()
    snap = setup()
    memo = CycleMemo()
    first = decide(snap, job, policy=policy, memo=memo)
    assert first.admissions == () and memo.victim_misses  # the failed search is remembered
    change(snap)
    fresh = copy.deepcopy(snap)  # decided with a fresh memo
    got = decide(snap, job, policy=policy, now=NOW + later_s, memo=memo)
    assert decision_key(got) == decision_key(decide(fresh, job, policy=policy, now=NOW + later_s))
    assert bool(got.admissions) == admits


@pytest.mark.python_only
def test_work_placed_in_the_cycle_of_a_miss_counts_once_it_may_be_displaced() -> None:
    # rack 0 is blocked; on rack 1 a LOW filler takes free node 2 just before the gang's search fails; the
    # simulator keeps the cycle's changes (keep=True), so nothing is released when the filler starts
    snap = snapshot_of(hgx_fleet(nodes=4, nodes_per_rack=2, racks_per_unit=1))
    running(snap, "firm", "p", 0, EIGHT, 2.0, preemptible=False)
    running(snap, "low1", "p", 1, EIGHT, 2.0, priority=LOW)
    running(snap, "low3", "p", 3, EIGHT, 2.0, priority=LOW)
    filler = a_job("filler").gpus(8).priority(LOW).submitted(NOW - 7_200.0).build()
    gang = a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH).submitted(NOW - 60.0).build()
    outcomes = []
    memo = CycleMemo()
    for now, jobs in ((NOW, (filler, gang)), (NOW + 60.0, (gang,)), (NOW + 700.0, (gang,))):
        fresh = copy.deepcopy(snap)  # decided with a fresh memo
        d = cycle(snap, queue_of(snap, *jobs), FIFO, now, keep=True, memo=memo)
        assert decision_key(d) == decision_key(cycle(fresh, queue_of(fresh, *jobs), FIFO, now, keep=True))
        for pre in d.preemptions:
            snap.finish(pre.job_id, give=False)
        for adm in d.admissions:
            job = next(j for j in jobs if j.id == adm.job_id)
            snap.start(job, adm.placement, now, adm.borrowed, adm.guaranteed, take=False)
        outcomes.append(sorted(a.job_id for a in d.admissions))
    assert outcomes == [["filler"], [], ["gang"]]  # the filler may be displaced after the minimum run time


@pytest.mark.python_only
def test_an_unchanged_pool_is_not_searched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _blocked_racks()
    job = a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH).build()
    memo = CycleMemo()
    decide(snap, job, memo=memo)

    def searched(*args: object) -> None:
        raise AssertionError("searched again")

    monkeypatch.setattr(preemption, "cheapest_nodes", searched)
    assert decide(snap, job, now=NOW + 3_600.0, memo=memo).admissions == ()


@pytest.mark.python_only
def test_a_search_two_nodes_short_is_not_repeated_after_one_node_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _every_node_blocked()
    job = a_job("gang").gpus(16).topology(MinTopology.RACK).priority(HIGH).build()
    memo = CycleMemo()
    decide(snap, job, memo=memo)
    snap.finish("n2a")  # node 2 can be freed now; rack 1 still lacks node 3

    def searched(*args: object) -> None:
        raise AssertionError("searched again")

    monkeypatch.setattr(preemption, "cheapest_nodes", searched)
    assert decide(snap, job, now=NOW + 60.0, memo=memo).admissions == ()


@pytest.mark.python_only
def test_a_miss_answers_for_larger_gangs_under_the_same_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _every_node_blocked()  # no node of the pool can be freed
    memo = CycleMemo()
    decide(snap, a_job("two").gpus(16).priority(HIGH).build(), memo=memo)

    def searched(*args: object) -> None:
        raise AssertionError("searched again")

    monkeypatch.setattr(preemption, "cheapest_nodes", searched)
    three = a_job("three").gpus(24).priority(HIGH).build()
    assert decide(snap, three, now=NOW + 60.0, memo=memo).admissions == ()


# ---- quota: reservations, the national pool, borrowing, reclaim -------------------------------------------------
def _reserved_pool(b2_started_h_ago: float = 1.0) -> Snapshot:
    """A shared 16-GPU pool; project a reserves 8. Project b runs 8 GPUs from the national pool (node 0) and 8
    borrowed from a's idle reservation (node 1)."""
    grants = [a_grant("g-a").project("a").reserved("H100", 8).build(), a_grant("g-b").project("b").credit(100).build()]
    snap = snapshot_of(hgx_fleet(nodes=2, racks_per_unit=1), tenants=[tenant("a"), tenant("b")], grants=grants)
    running(snap, "b1", "p", 0, EIGHT, 2.0, project="b")
    running(snap, "b2", "p", 1, EIGHT, b2_started_h_ago, project="b", borrowed=True)
    return snap


def test_reclaim_gives_a_project_its_reserved_gpus_back() -> None:
    snap = _reserved_pool()
    d = decide(snap, a_job("a1").project("a").gpus(8).build())
    assert d.preemptions == (Preemption("b2", "a1", "quota reclaim", 60.0),)
    (adm,) = d.admissions
    assert (adm.job_id, adm.borrowed, adm.guaranteed, adm.start_at_s) == ("a1", False, True, NOW + 60.0)
    assert admitted(d) == {"a1": [(1, EIGHT)]}


@pytest.mark.parametrize(
    ("job", "policy", "b2_age_h"),
    [
        (a_job("j").project("a").gpus(8).build(), FIFO.with_(reclaim=False), 1.0),
        (a_job("j").project("b").gpus(8).build(), FIFO, 1.0),  # no reservation to claim
        (a_job("j").project("a").gpus(8).build(), FIFO, 0.1),  # the borrower started 6 min ago
        (a_job("j").project("a").gpus(16).build(), FIFO, 1.0),  # more than its reservation
    ],
    ids=["reclaim-off", "no-reservation", "min-run-time", "beyond-reservation"],
)
def test_no_reclaim(job: Job, policy: Policy, b2_age_h: float) -> None:
    snap = _reserved_pool(b2_started_h_ago=b2_age_h)
    d = decide(snap, job, policy=policy)
    assert d.preemptions == () and d.admissions == ()


def test_reserved_national_and_borrowed_capacity_across_cycles() -> None:
    grants = [a_grant("g-a").project("a").reserved("H100", 8).build(), a_grant("g-b").project("b").credit(1e6).build()]
    snap = snapshot_of(hgx_fleet(nodes=4), tenants=[tenant("a"), tenant("b")], grants=grants)
    # 32 GPUs, 8 reserved by a: the national pool is 24
    q = queue_of(snap, a_job("a1").project("a").gpus(8).build())
    d = cycle(snap, q, FIFO, NOW)
    assert [(a.job_id, a.guaranteed, a.borrowed) for a in d.admissions] == [("a1", True, False)]
    apply_decision(snap, q, d)
    assert dict(snap.own_gpus) == {("a", "H100"): 8.0}
    jobs = [
        a_job("a2").project("a").gpus(8).submitted(1).build(),  # beyond a's reservation: national pool
        a_job("b1").project("b").gpus(8).submitted(2).build(),  # national pool: 16 of 24 used
        a_job("b2").project("b").gpus(8).submitted(3).build(),  # national pool: 24 of 24 used
    ]
    q = queue_of(snap, *jobs)
    d = cycle(snap, q, FIFO, NOW)
    assert [(a.job_id, a.guaranteed, a.borrowed) for a in d.admissions] == [
        ("a2", False, False),
        ("b1", False, False),
        ("b2", False, False),
    ]
    apply_decision(snap, q, d)
    assert snap.shared_used["H100"] == 24.0
    check_invariants(snap.capacity)
    # a's first job ends: its reserved 8 GPUs are idle, and b may borrow them
    snap.finish("a1")
    q = queue_of(snap, a_job("b3").project("b").gpus(8).build())
    d = cycle(snap, q, FIFO, NOW)
    assert [(a.job_id, a.guaranteed, a.borrowed) for a in d.admissions] == [("b3", False, True)]


def test_borrow_limit() -> None:
    snap = _reserved_pool()
    snap.finish("b2")
    # 16 GPUs online; a 25% limit lets a project borrow 4
    d = decide(snap, a_job("b3").project("b").gpus(8).build(), policy=FIFO.with_(borrow_limit_pct=25.0))
    assert d.pending["b3"] == PendingReason(
        ReasonCode.QUOTA, "project b already borrows 0 GPUs (limit 4); waiting for its own work to finish"
    )
    d = decide(snap, a_job("b3").project("b").gpus(4).build(), policy=FIFO.with_(borrow_limit_pct=25.0))
    assert [(a.job_id, a.borrowed) for a in d.admissions] == [("b3", True)]


def _lendable() -> Snapshot:
    fleet = (
        a_fleet()
        .owner("acme")
        .pool("lend", model="RTX", nodes=1, nodes_per_rack=1, racks_per_unit=1, owner="acme", sharing=Sharing.LENDABLE)
        .build()
    )
    return snapshot_of(fleet, tenants=[tenant("acme-team", affiliation="acme"), tenant("x")])


def test_lendable_pool_owner_is_entitled_and_others_borrow() -> None:
    snap = _lendable()
    d = decide(snap, a_job("own").project("acme-team").gpus(4).build(), a_job("other").project("x").gpus(4).build())
    assert [(a.job_id, a.borrowed) for a in d.admissions] == [("own", False), ("other", True)]


def test_non_preemptible_job_cannot_borrow() -> None:
    snap = _lendable()
    d = decide(snap, a_job("firm").project("x").preemptible(False).build())
    assert d.pending["firm"] == PendingReason(
        ReasonCode.QUOTA,
        "only borrowed capacity is free and non-preemptible jobs cannot borrow; "
        "mark the job preemptible or wait for entitled capacity",
    )


def test_lendable_owner_reclaims_borrowed_work() -> None:
    snap = _lendable()
    running(snap, "x1", "lend", 0, EIGHT, 1.0, project="x", borrowed=True)
    d = decide(snap, a_job("own").project("acme-team").gpus(8).build(), a_job("x2").project("x").gpus(8).build())
    assert d.preemptions == (Preemption("x1", "own", "quota reclaim", 60.0),)
    assert [(a.job_id, a.borrowed) for a in d.admissions] == [("own", False)]
    assert "x2" in d.pending


# ---- equivalence classes must not hide a job that could do better than its class-mate -----------------------------
def test_a_non_preemptible_class_mate_does_not_stop_a_preemptible_job_from_borrowing() -> None:
    fleet = (
        a_fleet()
        .owner("acme")
        .owner("xcorp")
        .pool("own", nodes=1, nodes_per_rack=1, racks_per_unit=1, owner="xcorp", sharing=Sharing.DEDICATED)
        .pool("lend", nodes=1, nodes_per_rack=1, racks_per_unit=1, owner="acme", sharing=Sharing.LENDABLE)
        .build()
    )
    snap = snapshot_of(fleet, tenants=[tenant("x", affiliation="xcorp")])
    running(snap, "r", "own", 0, EIGHT, 1.0, project="x")  # x's own pool is full; acme's lendable pool is idle
    firm = a_job("firm").project("x").gpus(4).preemptible(False).submitted(1).build()
    flexible = a_job("flexible").project("x").gpus(4).submitted(2).build()
    d = decide(snap, firm, flexible)
    assert [(a.job_id, a.placement.pool, a.borrowed) for a in d.admissions] == [("flexible", "lend", True)]


def test_a_lower_class_mate_does_not_stop_a_higher_priority_job_from_preempting() -> None:
    snap = snapshot_of(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    running(snap, "v", "p", 0, EIGHT, 1.0, priority=NORMAL)
    d = decide(
        snap,
        a_job("normal").gpus(8).priority(NORMAL).submitted(1).build(),
        a_job("high").gpus(8).priority(HIGH).submitted(2).build(),
    )
    assert [(p.job_id, p.by_job) for p in d.preemptions] == [("v", "high")]
    assert pools_of(d) == {"high": "p"}


def test_a_class_mate_without_a_reservation_does_not_stop_reclaim() -> None:
    snap = _reserved_pool()
    d = decide(
        snap,
        a_job("b3").project("b").gpus(8).submitted(1).build(),
        a_job("a1").project("a").gpus(8).submitted(2).build(),
    )
    assert d.preemptions == (Preemption("b2", "a1", "quota reclaim", 60.0),)
    assert pools_of(d) == {"a1": "p"}


def test_a_class_mate_at_its_borrow_limit_does_not_stop_another_project_from_borrowing() -> None:
    fleet = (
        a_fleet()
        .owner("acme")
        .owner("xcorp")
        .pool("own", nodes=1, nodes_per_rack=1, racks_per_unit=1, owner="xcorp", sharing=Sharing.DEDICATED)
        .pool("lend", nodes=1, nodes_per_rack=1, racks_per_unit=1, owner="acme", sharing=Sharing.LENDABLE)
        .build()
    )
    snap = snapshot_of(fleet, tenants=[tenant("x", affiliation="xcorp"), tenant("y", affiliation="xcorp")])
    running(snap, "r", "own", 0, EIGHT, 1.0, project="x")
    running(snap, "x-borrows", "lend", 1, (0, 1), 1.0, project="x", borrowed=True)
    # 16 GPUs online, 25%: each project may borrow 4; x already borrows 2
    d = decide(
        snap,
        a_job("x1").project("x").gpus(4).submitted(1).build(),
        a_job("y1").project("y").gpus(4).submitted(2).build(),
        policy=FIFO.with_(borrow_limit_pct=25.0),
    )
    assert [(a.job_id, a.placement.pool, a.borrowed) for a in d.admissions] == [("y1", "lend", True)]


def test_a_class_mate_demoted_by_its_grant_does_not_stop_another_project() -> None:
    grants = [
        a_grant("g-d").project("d").credit(0).on_exhausted(OnExhausted.SCAVENGER).build(),
        a_grant("g-e").project("e").credit(10).build(),
    ]
    snap = snapshot_of(hgx_fleet(), tenants=[tenant("d"), tenant("e")], grants=grants)
    d = decide(
        snap,
        a_job("d1").project("d").preemptible(False).submitted(1).build(),
        a_job("e1").project("e").preemptible(False).submitted(2).build(),
    )
    assert [(a.job_id, a.borrowed) for a in d.admissions] == [("e1", False)]
    assert d.pending["d1"].code == ReasonCode.QUOTA


def test_non_preemptible_class_mates_share_the_quota_reason() -> None:
    snap = _lendable()
    d = decide(snap, *(a_job(f"firm{i}").project("x").preemptible(False).submitted(i).build() for i in range(3)))
    assert len({d.pending[f"firm{i}"] for i in range(3)}) == 1
    assert d.pending["firm2"].code == ReasonCode.QUOTA


# ---- purity and determinism ---------------------------------------------------------------------------------------
def _busy_snapshot() -> tuple[Snapshot, list[Job]]:
    fleet = (
        a_fleet()
        .site("gov", Classification.RESTRICTED)
        .site("cloud", Classification.INTERNAL)
        .owner("acme")
        .pool("h100", site="gov", nodes=4)
        .pool("rtx", site="cloud", model="RTX", nodes=2, racks_per_unit=1, owner="acme", sharing=Sharing.LENDABLE)
        .build()
    )
    grants = [
        a_grant("g-a").project("a").reserved("H100", 8).build(),
        a_grant("g-b").project("b").credit(100).build(),
        a_grant("g-acme").project("acme-team").credit(100).build(),
    ]
    snap = snapshot_of(
        fleet, tenants=[tenant("a"), tenant("b"), tenant("acme-team", affiliation="acme")], grants=grants
    )
    snap.usage_su.update({"a": 10.0, "b": 500.0})
    running(snap, "r1", "h100", 0, EIGHT, 3.0, project="b", priority=LOW)
    running(snap, "r2", "h100", 1, (0, 1, 2, 3), 2.0, project="b", borrowed=True)
    running(snap, "r3", "rtx", 4, (0, 1), 0.05, project="b", borrowed=True)
    running(snap, "r4", "h100", 2, (0,), 1.0, project="b")
    jobs = [
        a_job("a-big").project("a").gpus(16).submitted(1).build(),
        a_job("a-frac").project("a").fraction(250).submitted(2).build(),
        a_job("b-hi").project("b").gpus(8).priority(HIGH).submitted(3).build(),
        a_job("b-secret").project("b").gpus(2).classification(Classification.RESTRICTED).submitted(4).build(),
        a_job("acme").project("acme-team").gpus(8).models("RTX").submitted(5).build(),
        a_job("b-long").project("b").gpus(4).limit_h(100).submitted(6).build(),
        a_job("nobody").project("nobody").build(),
    ]
    return snap, jobs


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(ordering="kfabric", placement="best-fit"),
        Policy(ordering="qssf", placement="fgd", backfill="conservative"),
        Policy(ordering="las", placement="first-fit", backfill="none"),
        Policy(ordering="sjf", placement="kfabric", reservations=3),
    ],
    ids=["default", "kfabric-best-fit", "qssf-fgd-conservative", "las-first-fit-none", "sjf-kfabric-3"],
)
def test_a_cycle_leaves_the_snapshot_unchanged_and_repeats_exactly(policy: Policy) -> None:
    snap, jobs = _busy_snapshot()
    d = decide(snap, *jobs, policy=policy)  # decide() checks purity, repetition and reasons
    assert d.pending["nobody"].code == ReasonCode.NO_GRANT
    twin, twin_jobs = _busy_snapshot()
    assert decision_key(cycle(twin, queue_of(twin, *twin_jobs), policy, NOW)) == decision_key(d)


def test_a_cycle_restores_capacity_logging_state() -> None:
    snap, jobs = _busy_snapshot()
    snap.capacity.logging = False
    cycle(snap, queue_of(snap, *jobs), Policy(), NOW)
    assert snap.capacity.logging is False and snap.capacity.mark() == 0


def test_lab_scenario_smoke() -> None:
    from kfabric.scenarios.loader import load_scenario

    scenario = load_scenario("lab")
    orgs = {p.name: p.organization for p in scenario.projects}
    tenants = [tenant(p, affiliation="acme" if orgs[p] == "acme" else "", organization=orgs[p]) for p in orgs]
    snap = snapshot_of(scenario.fleet, tenants=tenants)
    jobs = [
        a_job("vision-16").project("vision-lab").gpus(16).build(),
        a_job("vision-frac").project("vision-lab").fraction(500).build(),
        a_job("tiny-secret").project("tinyml-llm").gpus(8).classification(Classification.RESTRICTED).build(),
        a_job("acme-rtx").project("acme-internal").gpus(8).models("RTX-PRO-6000").build(),
        a_job("too-big").project("tinyml-llm").gpus(64).build(),
    ]
    d = decide(snap, *jobs, policy=Policy())
    assert {a.job_id: a.placement.pool for a in d.admissions} == {
        "vision-16": "h100",
        "vision-frac": "h100",  # the RTX pool is lendable (acme's): not borrowed capacity comes first
        "tiny-secret": "h100",
        "acme-rtx": "rtx",
    }
    assert d.pending["too-big"].code == ReasonCode.TOPOLOGY
