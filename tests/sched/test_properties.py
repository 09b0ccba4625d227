"""Properties of the scheduling core over random small fleets, running work and queues (hypothesis).

Whatever the fleet, the running work, the queue and the policy: applying a decision never oversubscribes a
GPU, CPU or memory, nor a site's power; every admission holds exactly its job's GPUs in a shape the job
accepts, on a site cleared for its data; no job younger than the minimum run time is preempted; a cycle
leaves the snapshot as it found it and repeats exactly. And a project's reserved GPUs are always obtainable
by reclaiming them from preemptible borrowers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from builders import (
    HOUR_S,
    a_fleet,
    a_grant,
    a_job,
    apply_decision,
    capacity_state,
    check_invariants,
    check_power,
    decision_key,
    queue_of,
    snapshot_of,
    snapshot_state,
    tenant,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfabric.model import Classification, Job, MinTopology, PriorityClass, Sharing
from kfabric.model.decision import Decision
from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.cycle import CPU_MILLI_PER_GPU, MEMORY_MIB_PER_GPU, cycle
from kfabric.sched.placement import PlaceRequest, best_fit
from kfabric.sched.policy import Policy
from kfabric.sched.queue import PendingQueue
from kfabric.sched.registry import ORDERINGS, PLACEMENTS
from kfabric.sched.snapshot import Snapshot

NOW = 1_000_000.0
PROJECTS = ("a", "b", "c")
AFFILIATION = {"a": "acme", "b": "", "c": "gov"}
CLASSIFICATIONS = st.sampled_from([Classification.PUBLIC, Classification.PUBLIC, *Classification])
CLEARANCES = st.sampled_from([*Classification, Classification.RESTRICTED])
ANY_PRIORITY = st.sampled_from(list(PriorityClass))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- worlds: plain descriptions, built into model objects the same way every time ---------------------------------
@dataclass(frozen=True)
class PoolSpec:
    model: str
    gpus_per_node: int
    nodes: int
    nodes_per_rack: int
    racks_per_unit: int
    site: int
    sharing: Sharing
    owner: str
    domain: str  # one NVLink domain per "node" (HGX), per "half" a node, or per "rack" (NVL72-like)


@dataclass(frozen=True)
class RunSpec:
    pool: int
    gpus: int
    milli: int
    started_s_ago: float
    limit_h: float
    priority: PriorityClass
    preemptible: bool
    borrowed: bool
    project: str


@dataclass(frozen=True)
class World:
    clearances: tuple[Classification, ...]
    power_caps_mw: tuple[float, ...]
    pools: tuple[PoolSpec, ...]
    runs: tuple[RunSpec, ...]
    jobs: tuple[Job, ...]
    reserved_a: int
    policy: Policy


pool_specs = st.builds(
    PoolSpec,
    model=st.sampled_from(["H100", "B200", "RTX"]),
    gpus_per_node=st.sampled_from([4, 8]),
    nodes=st.integers(1, 6),
    nodes_per_rack=st.integers(1, 3),
    racks_per_unit=st.integers(1, 2),
    site=st.integers(0, 1),
    sharing=st.sampled_from([Sharing.SHARED, Sharing.SHARED, Sharing.SHARED, Sharing.LENDABLE, Sharing.DEDICATED]),
    owner=st.sampled_from(["acme", "gov"]),
    domain=st.sampled_from(["node", "half", "rack"]),
)

run_specs = st.builds(
    RunSpec,
    pool=st.integers(0, 2),
    gpus=st.sampled_from([1, 2, 4, 8, 8]),
    milli=st.sampled_from([1000, 1000, 1000, 250, 500]),
    started_s_ago=st.sampled_from([60.0, 300.0, 599.0, 600.0, 3_600.0, 20_000.0]),
    limit_h=st.sampled_from([1.0, 4.0, 24.0]),
    priority=st.sampled_from(list(PriorityClass)),
    preemptible=st.booleans(),
    borrowed=st.booleans(),
    project=st.sampled_from(PROJECTS),
)


@st.composite
def pending_jobs(draw: st.DrawFn, priorities: st.SearchStrategy[PriorityClass] = ANY_PRIORITY) -> tuple[Job, ...]:
    n = draw(st.integers(1, 10))
    jobs = []
    for i in range(n):
        b = (
            a_job(f"p{i}")
            .project(draw(st.sampled_from(PROJECTS)))
            .submitted(float(draw(st.integers(0, 5))))
            .limit_h(draw(st.sampled_from([0.5, 1.0, 4.0, 30.0])))
            .priority(draw(priorities))
            .preemptible(draw(st.booleans()))
            .classification(draw(CLASSIFICATIONS))
        )
        kind = draw(st.sampled_from(["whole", "whole", "fraction", "gang", "shape"]))
        if kind == "fraction":
            b.fraction(draw(st.sampled_from([100, 250, 500, 900])))
        elif kind == "whole":
            b.gpus(draw(st.sampled_from([1, 2, 3, 4, 8])))
            b.topology(draw(st.sampled_from([MinTopology.ANY, MinTopology.ANY, MinTopology.NVLINK, MinTopology.NODE])))
        elif kind == "gang":
            b.gpus(draw(st.sampled_from([8, 12, 16, 24])))
            b.topology(draw(st.sampled_from([MinTopology.ANY, MinTopology.RACK, MinTopology.UNIT])))
        else:
            b.shape(draw(st.integers(2, 3)), draw(st.sampled_from([2, 4])))
            b.topology(draw(st.sampled_from([MinTopology.ANY, MinTopology.NVLINK, MinTopology.RACK])))
        if draw(st.integers(0, 2)) == 0:
            b.models(*draw(st.lists(st.sampled_from(["H100", "B200", "RTX"]), min_size=1, max_size=2, unique=True)))
        if draw(st.integers(0, 3)) == 0:
            b.cpu(draw(st.sampled_from([1_000, 30_000, 100_000])))
        jobs.append(b.build())
    return tuple(jobs)


policies = st.builds(
    Policy,
    ordering=st.sampled_from(sorted(ORDERINGS)),
    placement=st.sampled_from(sorted(PLACEMENTS)),
    backfill=st.sampled_from(["none", "easy", "conservative"]),
    grace_s=st.sampled_from([0.0, 60.0]),
    min_run_s=st.sampled_from([0.0, 600.0]),
    borrow_limit_pct=st.sampled_from([100.0, 30.0]),
    reservations=st.integers(0, 2),
)

worlds = st.builds(
    World,
    clearances=st.tuples(CLEARANCES, CLEARANCES),
    power_caps_mw=st.tuples(st.sampled_from([0.03, 0.1, 1.0]), st.sampled_from([0.05, 1.0])),
    pools=st.lists(pool_specs, min_size=1, max_size=3).map(tuple),
    runs=st.lists(run_specs, max_size=16).map(tuple),
    jobs=pending_jobs(),
    reserved_a=st.sampled_from([0, 0, 4, 8]),
    policy=policies,
)


#: crowded fleets: much low-priority running work, high-priority arrivals (preemption everywhere)
busy_worlds = st.builds(
    World,
    clearances=st.just((Classification.RESTRICTED, Classification.RESTRICTED)),
    power_caps_mw=st.just((1.0, 1.0)),
    pools=st.lists(pool_specs.filter(lambda p: p.sharing != Sharing.DEDICATED), min_size=1, max_size=2).map(tuple),
    runs=st.lists(
        run_specs.map(lambda r: replace(r, priority=PriorityClass(min(r.priority, PriorityClass.NORMAL)))),
        min_size=4,
        max_size=20,
    ).map(tuple),
    jobs=pending_jobs(st.sampled_from([PriorityClass.HIGH, PriorityClass.URGENT])),
    reserved_a=st.sampled_from([0, 8]),
    policy=policies,
)


def build(world: World) -> Snapshot:
    """The snapshot a world describes; running work that does not fit (or would break a power cap) is dropped."""
    b = a_fleet()
    for i, (clearance, cap_mw) in enumerate(zip(world.clearances, world.power_caps_mw, strict=True)):
        b.site(f"s{i}", clearance, power_cap_mw=cap_mw)
    for i, p in enumerate(world.pools):
        b.pool(
            f"p{i}",
            site=f"s{p.site}",
            model=p.model,
            gpus_per_node=p.gpus_per_node,
            nodes=p.nodes,
            nodes_per_rack=p.nodes_per_rack,
            racks_per_unit=p.racks_per_unit,
            node_kw=8.0,
            owner=p.owner,
            sharing=p.sharing,
            cpu_milli=112_000,
            domain={"node": p.gpus_per_node, "half": p.gpus_per_node // 2, "rack": p.gpus_per_node * p.nodes_per_rack}[
                p.domain
            ],
        )
    fleet = b.build()
    grants = [a_grant(f"g-{p}").project(p).credit(100.0).build() for p in PROJECTS if p != "a"]
    a = a_grant("g-a").project("a").credit(100.0)
    if world.reserved_a:
        a.reserved("H100", world.reserved_a)
    grants.append(a.build())
    snap = snapshot_of(fleet, tenants=[tenant(p, affiliation=AFFILIATION[p]) for p in PROJECTS], grants=grants)
    cap = snap.capacity
    for i, r in enumerate(world.runs):
        p = cap.pools[r.pool % len(cap.pools)]
        job = a_job(f"r{i}").project(r.project).limit_h(r.limit_h).priority(r.priority).preemptible(r.preemptible)
        job = (job.fraction(r.milli) if r.milli < MILLI_PER_GPU else job.gpus(r.gpus)).build()
        if cap.site_kw[p.site] + job.whole_gpus * p.kw_per_gpu > cap.sites[p.site].cap_kw:
            continue
        placement = best_fit(cap, PlaceRequest(job, [p.index], CPU_MILLI_PER_GPU, MEMORY_MIB_PER_GPU))
        if placement is not None:
            snap.start(job, placement, NOW - r.started_s_ago, r.borrowed)
    return snap


def check_decision(snap: Snapshot, q: PendingQueue, jobs: tuple[Job, ...], d: Decision, policy: Policy) -> None:
    """Every admission holds exactly its job's GPUs, in an accepted shape, pool and site; victims are old enough."""
    cap = snap.capacity
    by_id = {j.id: j for j in jobs}
    taken: set[tuple[int, int]] = set()
    for adm in d.admissions:
        job = by_id[adm.job_id]
        pool = cap.pool_by_name[adm.placement.pool]
        site = cap.sites[pool.site]
        gpus = [(s.node, g) for s in adm.placement.shares for g in s.gpus]
        # exactly the job's GPUs: a gang all at once, a fraction on one GPU
        assert len(gpus) == len(set(gpus)) == (1 if job.fractional else job.gpus)
        assert all(s.gpu_milli == job.gpu_milli for s in adm.placement.shares)
        assert adm.placement.gpu_milli_total == job.gpu_milli_total
        assert all(
            s.node in pool.node_range and all(g < pool.gpus_per_node for g in s.gpus) for s in adm.placement.shares
        )
        assert taken.isdisjoint(gpus) or job.fractional, "two admissions on one whole GPU"
        taken.update(gpus)
        if job.nodes is not None:
            assert sorted(len(s.gpus) for s in adm.placement.shares) == [job.gpus_per_node] * job.nodes
        nodes = [s.node for s in adm.placement.shares]
        if job.min_topology == MinTopology.NODE:
            assert len(nodes) == 1
        elif job.min_topology == MinTopology.RACK:
            assert len({int(cap.node_rack[n]) for n in nodes}) == 1
        elif job.min_topology == MinTopology.UNIT:
            assert len({int(cap.node_unit[n]) for n in nodes}) == 1
        elif job.min_topology == MinTopology.NVLINK:
            assert len({(n - pool.first_node) // pool.nodes_per_domain for n in nodes}) == 1
            assert len({(s.node, g // pool.domain_gpus) for s in adm.placement.shares for g in s.gpus}) == 1 or (
                pool.domain_gpus >= pool.gpus_per_node
            )
        # sovereignty, model list, dedicated pools
        assert site.clearance >= job.classification
        assert adm.rule.startswith(f"site {site.name} ")
        assert not job.gpu_models or pool.model in job.gpu_models
        assert pool.sharing != Sharing.DEDICATED or pool.owner == AFFILIATION[job.project]
        assert not adm.borrowed or job.preemptible
        assert adm.start_at_s in (NOW, NOW + policy.grace_s)
    victims = [p.job_id for p in d.preemptions]
    assert len(victims) == len(set(victims))
    for v in victims:
        run = snap.running[v]
        assert run.job.preemptible
        assert NOW - run.start_s >= policy.min_run_s, "a job younger than the minimum run time was preempted"


@FAST
@given(st.one_of(worlds, busy_worlds))
def test_any_decision_is_safe_to_apply(world: World) -> None:
    snap = build(world)
    check_invariants(snap.capacity)
    check_power(snap.capacity)
    jobs = world.jobs
    q = queue_of(snap, *jobs)
    before = snapshot_state(snap)
    d = cycle(snap, q, world.policy, NOW)
    assert snapshot_state(snap) == before, "the cycle changed the snapshot"
    assert decision_key(cycle(snap, q, world.policy, NOW)) == decision_key(d), "same inputs, another decision"
    assert decision_key(cycle(build(world), queue_of(build(world), *jobs), world.policy, NOW)) == decision_key(d)
    admitted = {a.job_id for a in d.admissions}
    assert admitted.isdisjoint(d.pending) and admitted | set(d.pending) == {j.id for j in jobs}
    assert all(r.message for r in d.pending.values())
    check_decision(snap, q, jobs, d, world.policy)
    # apply it: nothing oversubscribed, no site over its power cap, the counters still add up
    apply_decision(snap, q, d)
    check_invariants(snap.capacity)
    check_power(snap.capacity)
    # and a second cycle an hour later, on the applied state, is just as safe
    later = NOW + HOUR_S
    d2 = cycle(snap, q, world.policy, later)
    apply_decision(snap, q, d2)
    check_invariants(snap.capacity)
    check_power(snap.capacity)


def _capacity_numbers(snap: Snapshot) -> dict[str, object]:
    """The capacity state with each bucket as a set: a kept cycle may leave bucket dicts in another order."""
    state = capacity_state(snap.capacity)
    state["buckets"] = [[sorted(b) for b in pool] for pool in state["buckets"]]  # type: ignore[attr-defined]
    state["fresh"] = [sorted(f) for f in state["fresh"]]  # type: ignore[attr-defined]
    return state


@FAST
@given(st.one_of(worlds, busy_worlds))
def test_a_kept_cycle_leaves_the_capacity_as_its_applied_decision(world: World) -> None:
    undone, kept = build(world), build(world)
    q_undone, q_kept = queue_of(undone, *world.jobs), queue_of(kept, *world.jobs)
    d = cycle(undone, q_undone, world.policy, NOW)
    apply_decision(undone, q_undone, d)
    d_kept = cycle(kept, q_kept, world.policy, NOW, keep=True)
    assert decision_key(d_kept) == decision_key(d), "keep changed the decision"
    for p in d_kept.preemptions:
        kept.finish(p.job_id, give=False)
    for adm in d_kept.admissions:
        job = q_kept.remove(adm.job_id)
        kept.start(job, adm.placement, adm.start_at_s, adm.borrowed, adm.guaranteed, take=False)
    assert _capacity_numbers(kept) == _capacity_numbers(undone)
    assert kept.capacity.mark() == 0 and not kept.capacity.logging, "a kept cycle leaves no trial log behind"
    check_invariants(kept.capacity)


@st.composite
def reclaim_worlds(draw: st.DrawFn) -> tuple[int, int, list[int], int, Policy]:
    nodes = draw(st.integers(1, 3))
    reserved = draw(st.integers(1, min(8, 8 * nodes)))
    borrower_sizes = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=12))
    queued_borrowers = draw(st.integers(0, 3))
    policy = draw(
        st.builds(
            Policy,
            ordering=st.sampled_from(sorted(ORDERINGS)),
            placement=st.sampled_from(sorted(PLACEMENTS)),
            backfill=st.sampled_from(["none", "easy", "conservative"]),
        )
    )
    return nodes, reserved, borrower_sizes, queued_borrowers, policy


@FAST
@given(reclaim_worlds())
def test_a_reservation_is_always_obtainable_by_reclaim(world: tuple[int, int, list[int], int, Policy]) -> None:
    nodes, reserved, sizes, queued_borrowers, policy = world
    fleet = a_fleet().pool("p", nodes=nodes, nodes_per_rack=1, racks_per_unit=1).build()
    grants = [
        a_grant("g-a").project("a").reserved("H100", reserved).build(),
        a_grant("g-b").project("b").credit(1e6).build(),
    ]
    snap = snapshot_of(fleet, tenants=[tenant("a"), tenant("b")], grants=grants)
    # the borrowers fill what they can, through the scheduler (which decides what is borrowed), then keep
    # filling with single GPUs until the pool is full
    start = NOW - 2 * HOUR_S
    borrowers = [a_job(f"b{i}").project("b").gpus(g).limit_h(24).submitted(i).build() for i, g in enumerate(sizes)]
    q = queue_of(snap, *borrowers)
    apply_decision(snap, q, cycle(snap, q, Policy(ordering="fifo"), start))
    for i in range(8 * nodes):
        if int(snap.capacity.pool_milli[0]) == 0:
            break
        q = queue_of(snap, a_job(f"f{i}").project("b").gpus(1).limit_h(24).build())
        apply_decision(snap, q, cycle(snap, q, Policy(ordering="fifo"), start))
    assert int(snap.capacity.pool_milli[0]) == 0
    borrowed = sum(r.gpus for r in snap.running.values() if r.borrowed)
    assert borrowed >= reserved
    # the owner asks for its reserved GPUs, one at a time, behind borrowers' jobs of the same shape
    queued = [a_job(f"w{i}").project("b").gpus(1).submitted(0).build() for i in range(queued_borrowers)]
    mine = [a_job(f"a{i}").project("a").gpus(1).submitted(1).build() for i in range(reserved)]
    q = queue_of(snap, *queued, *mine)
    d = cycle(snap, q, policy, NOW)
    assert sorted(a.job_id for a in d.admissions if a.job_id.startswith("a")) == sorted(j.id for j in mine)
    assert all(a.guaranteed for a in d.admissions if a.job_id.startswith("a"))
    assert all(snap.running[p.job_id].borrowed and p.reason == "quota reclaim" for p in d.preemptions)
    apply_decision(snap, q, d)
    check_invariants(snap.capacity)
    assert snap.own_gpus[("a", "H100")] == reserved
