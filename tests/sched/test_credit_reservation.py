"""Credit is reserved at admission (issue 15, hole 5): a job starts under a credit grant only if the free credit
covers its time limit at the SU rate of the pool it gets; within a cycle no two jobs share the same credit; and
no interleaving of submissions, admissions, completions and top-ups lets a grant go below zero."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pytest
from builders import DAY_S, a_fleet, a_grant, a_job, apply_decision, queue_of, snapshot_of, tenant
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kfabric.model import Fleet, Job
from kfabric.model.decision import Decision
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched.cycle import cycle
from kfabric.sched.policy import Policy
from kfabric.sched.rules import su_hours
from kfabric.sched.snapshot import GrantState
from kfabric.sim.engine import SimOptions, Simulator
from kfabric.sim.workload import SimJob, Workload

NOW = 100 * DAY_S
FIFO = Policy(ordering="fifo")


def two_models() -> Fleet:
    """16 H100 (1.0 SU per GPU-hour) and 16 B200 (2.0) on one site."""
    return a_fleet().pool("h100", nodes=2).pool("b200", model="B200", nodes=2).build()


def decide(grants: list[GrantState], *jobs: Job, fleet: Fleet | None = None) -> Decision:
    snap = snapshot_of(fleet or two_models(), tenants=[tenant("a"), tenant("b")], grants=grants)
    return cycle(snap, queue_of(snap, *jobs), FIFO, NOW)


def need_reason(need: str, free: str, grant: str = "g-a") -> PendingReason:
    return PendingReason(
        ReasonCode.CREDIT_EXHAUSTED,
        f"needs {need} SU-hours at its time limit, {free} free of grant {grant}; top it up or lower --time",
    )


@dataclass(frozen=True)
class Case:
    name: str
    credit: float | None
    jobs: tuple[Job, ...]
    admitted: dict[str, str]  # job -> pool
    pending: dict[str, PendingReason] = field(default_factory=dict)
    on_exhausted: OnExhausted = OnExhausted.STOP


H100_ONLY = ("H100",)
CASES = [
    Case("no-credit-limit", None, (a_job("j").gpus(8).limit_h(1000).models(*H100_ONLY).build(),), {"j": "h100"}),
    Case("exactly-covered", 8.0, (a_job("j").gpus(8).limit_h(1).models(*H100_ONLY).build(),), {"j": "h100"}),
    Case(
        "short-by-a-little",
        7.99,
        (a_job("j").gpus(8).limit_h(1).models(*H100_ONLY).build(),),
        {},
        {"j": need_reason("8.0", "8.0")},
    ),
    Case(
        "the-attack: 0.001 SU-hours",
        0.001,
        (a_job("j").gpus(1).limit_s(60).models(*H100_ONLY).build(),),
        {},
        {"j": need_reason("0.0167", "0.001")},
    ),
    Case(
        "second-job-of-the-cycle-waits",
        12.0,
        (
            a_job("j1").gpus(8).limit_h(1).models(*H100_ONLY).submitted(1).build(),
            a_job("j2").gpus(8).limit_h(1).models(*H100_ONLY).submitted(2).build(),
        ),
        {"j1": "h100"},
        {"j2": need_reason("8.0", "4.0")},
    ),
    Case(
        "a-smaller-job-behind-it-still-fits",
        12.0,
        (
            a_job("j1").gpus(8).limit_h(1).models(*H100_ONLY).submitted(1).build(),
            a_job("j2").gpus(8).limit_h(1).models(*H100_ONLY).submitted(2).build(),
            a_job("j3").gpus(4).limit_h(1).models(*H100_ONLY).submitted(3).build(),
        ),
        {"j1": "h100", "j3": "h100"},
        {"j2": need_reason("8.0", "4.0")},
    ),
    Case(
        "fractional-gpu-pays-its-share",
        1.0,
        (a_job("j").fraction(250).limit_h(4).models(*H100_ONLY).build(),),
        {"j": "h100"},
    ),
    Case(
        "pool-rate: B200 only costs double",
        10.0,
        (a_job("j").gpus(8).limit_h(1).models("B200").build(),),
        {},
        {"j": need_reason("16.0", "10.0")},
    ),
    Case(
        "pool-rate: only the pool it can pay for",
        10.0,
        (a_job("j").gpus(8).limit_h(1).models("B200", "H100").build(),),
        {"j": "h100"},
    ),
    Case(
        "scavenger-program: uncovered work runs borrowed",
        1.0,
        (a_job("j").gpus(8).limit_h(1).models(*H100_ONLY).build(),),
        {"j": "h100"},
        on_exhausted=OnExhausted.SCAVENGER,
    ),
    Case(
        "scavenger-program: but not if it cannot be preempted",
        1.0,
        (a_job("j").gpus(8).limit_h(1).models(*H100_ONLY).preemptible(False).build(),),
        {},
        {"j": PendingReason(ReasonCode.QUOTA, "")},
        on_exhausted=OnExhausted.SCAVENGER,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_admission_needs_credit_for_the_time_limit(case: Case) -> None:
    grant = a_grant("g-a").project("a").on_exhausted(case.on_exhausted)
    if case.credit is not None:
        grant.credit(case.credit)
    d = decide([grant.build()], *case.jobs)
    assert {a.job_id: a.placement.pool for a in d.admissions} == case.admitted
    for job_id, reason in case.pending.items():
        got = d.pending[job_id]
        assert got.code == reason.code
        if reason.message:
            assert got.message == reason.message
    if case.on_exhausted == OnExhausted.SCAVENGER and case.admitted:
        assert all(a.borrowed for a in d.admissions)


def test_jobs_without_a_credit_grant_are_not_held_back_by_another_projects_credit() -> None:
    grants = [a_grant("g-a").project("a").credit(0.5).build(), a_grant("g-b").project("b").build()]
    d = decide(
        grants,
        a_job("a1").gpus(1).limit_h(1).submitted(1).build(),
        a_job("b1").project("b").gpus(8).limit_h(100).submitted(2).build(),
    )
    assert [a.job_id for a in d.admissions] == ["b1"]
    assert d.pending["a1"].code == ReasonCode.CREDIT_EXHAUSTED


def test_guaranteed_work_draws_its_reservations_credit() -> None:
    """Work on a project's reserved GPUs is charged to the grant that reserves them, so that grant's credit is
    the one checked (here it has too little, while the project's later credit grant has plenty)."""
    grants = [
        a_grant("g-res").project("a").reserved("H100", 8).credit(1.0).build(),
        a_grant("g-new").project("a").credit(1e6).between(10, 365 * DAY_S).build(),
    ]
    d = decide(grants, a_job("j").gpus(8).limit_h(1).models(*H100_ONLY).build())
    assert d.admissions == ()
    assert d.pending["j"] == need_reason("8.0", "1.0", "g-res")
    # free to use other models, it goes where its covering grant (g-new) pays: the B200 pool
    d = decide(grants, a_job("j").gpus(8).limit_h(1).build())
    assert [(a.placement.pool, a.guaranteed) for a in d.admissions] == [("b200", False)]


# ---- property: no interleaving overspends ---------------------------------------------------------------------
@dataclass
class Owner:
    """What the service and the twin keep: credit, what was charged, and what each active job holds."""

    credit: float
    charged: float = 0.0
    held: dict[str, float] = field(default_factory=dict)

    def free(self) -> float:
        return self.credit - self.charged - sum(self.held.values())


op = st.one_of(
    st.tuples(
        st.just("submit"),
        st.integers(1, 8),
        st.floats(0.05, 6.0),
        st.sampled_from([(), ("H100",), ("B200",), ("B200", "H100")]),
        st.sampled_from([1000, 500]),
    ),
    st.tuples(st.just("cycle")),
    st.tuples(st.just("complete"), st.integers(0, 50), st.floats(0.0, 1.0)),
    st.tuples(st.just("topup"), st.floats(0.1, 40.0)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.0, 40.0), st.lists(op, min_size=1, max_size=40))
@example(1.0, [("submit", 1, 1.0, (), 1000), ("submit", 1, 1.0, (), 1000), ("cycle",)])  # one credit, two jobs
@example(10.0, [("submit", 8, 1.0, ("B200", "H100"), 1000), ("cycle",), ("topup", 8.0), ("cycle",)])
def test_no_interleaving_overspends_a_grant(credit: float, ops: list[tuple[object, ...]]) -> None:
    fleet = two_models()
    owner = Owner(credit)
    weights = {p.name: fleet.model(p.gpu_model).su_weight for p in fleet.pools}
    snap = snapshot_of(fleet, tenants=[tenant("a")], grants=[a_grant("g-a").credit(credit).build()])
    q = queue_of(snap)
    n = 0
    for step in ops:
        kind = step[0]
        if kind == "submit":
            gpus, hours, models, milli = step[1:]
            b = a_job(f"j{n}").limit_h(float(hours)).models(*models).submitted(n)  # type: ignore[arg-type, misc]
            job = (b.fraction(int(milli)) if milli != 1000 else b.gpus(int(gpus))).build()  # type: ignore[call-overload]
            q.add(job, "")
            n += 1
        elif kind == "cycle":
            d = cycle(snap, q, FIFO, NOW)
            apply_decision(snap, q, d)
            for adm in d.admissions:
                run = snap.running[adm.job_id]
                owner.held[adm.job_id] = su_hours(run.job, weights[adm.placement.pool])
            for job_id, reason in d.pending.items():
                if reason.code == ReasonCode.CREDIT_EXHAUSTED:
                    assert "top it up" in reason.message, job_id
        elif kind == "complete" and snap.running:
            index, fraction = step[1:]
            job_id = sorted(snap.running)[int(index) % len(snap.running)]  # type: ignore[call-overload]
            snap.finish(job_id)
            owner.charged += float(fraction) * owner.held.pop(job_id)  # type: ignore[arg-type]
        elif kind == "topup":
            owner.credit += float(step[1])  # type: ignore[arg-type]
        assert owner.charged + sum(owner.held.values()) <= owner.credit + 1e-6
        snap.grants = {"g-a": snap.grants["g-a"].with_credit(owner.free())}
        snap.__post_init__()


# ---- the twin applies the same rule ---------------------------------------------------------------------------
def test_the_twin_holds_credit_at_start_and_releases_the_unused_part_at_the_end() -> None:
    """12 SU-hours; two 8-GPU H100 jobs with 1 h limits (8 SU-hours each) that run 30 min. The second waits until
    the first ends (4 used, 4 given back), then runs; at the end 12 - 4 - 4 = 4 SU-hours are left."""
    fleet = a_fleet().pool("h100", nodes=2).build()
    jobs = [SimJob(a_job(f"j{i}").gpus(8).limit_h(1).submitted(float(i)).build(), 1800.0) for i in range(2)]
    grant = a_grant("g-a").credit(12.0).between(-DAY_S, 365 * DAY_S).build()
    sim = Simulator(
        fleet,
        Workload("two", jobs),
        FIFO,
        SimOptions(start=date(2026, 1, 1), failures_per_gpu_s=0.0),
        tenants={"a": tenant("a")},
        grants={"g-a": grant},
    )
    sim.run()
    starts = {r.job_id: r.start_s for r in sim.records}
    assert starts["j0"] < 1800.0 <= starts["j1"]
    assert sim.snap.grants["g-a"].credit_left_su == pytest.approx(4.0)
    assert sim.snap.grants_by_project["a"][0].credit_left_su == pytest.approx(4.0)
