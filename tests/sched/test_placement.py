"""Placement policies: exact nodes and GPUs for single-node, fractional and gang jobs; all-or-nothing."""

from __future__ import annotations

import pytest
from builders import (
    a_fleet,
    a_job,
    capacity_state,
    check_invariants,
    hgx_fleet,
    node_racks,
    node_units,
    online_capacity,
    use,
)

from kfabric.model import Job, MinTopology
from kfabric.model.decision import Placement
from kfabric.sched.capacity import Capacity
from kfabric.sched.placement import PlaceRequest, node_counts, prefer_pools, topology_ok
from kfabric.sched.registry import PLACEMENTS

ALL = sorted(PLACEMENTS)  # best-fit, fgd, first-fit, kfabric


def place(
    name: str, cap: Capacity, job: Job, pools: list[int] | None = None, cpu: int = 0, mem: int = 0
) -> Placement | None:
    req = PlaceRequest(job, pools if pools is not None else list(range(len(cap.pools))), cpu, mem)
    before = capacity_state(cap)
    found = PLACEMENTS[name](cap, req)
    assert capacity_state(cap) == before, "a placement policy must not change capacity"
    if found is not None:
        assert sum(len(s.gpus) for s in found.shares) == (job.gpus if not job.fractional else 1)
        assert found.gpu_milli_total == job.gpu_milli_total
    return found


def nodes_gpus(p: Placement | None) -> list[tuple[int, tuple[int, ...]]] | None:
    return None if p is None else [(s.node, s.gpus) for s in p.shares]


# ---- single node, whole GPUs ----------------------------------------------------------------------------------
def _partly_used() -> Capacity:
    """Free whole GPUs per node: [7, 4, 5, 8]; racks {0,1} and {2,3}."""
    cap = online_capacity(hgx_fleet())
    use(cap, 0, 1)
    use(cap, 1, 4)
    use(cap, 2, 3)
    return cap


@pytest.mark.parametrize(
    ("policy", "gpus", "expected"),
    [
        ("best-fit", 3, [(1, (4, 5, 6))]),  # the fullest node that fits: 4 free
        # without a workload kfabric packs for more jobs of this shape: 7 -> 4 still holds one, 4 -> 1 would not
        # (and 8 -> 5 breaks the whole node), so node 0
        ("kfabric", 3, [(0, (1, 2, 3))]),
        ("first-fit", 3, [(0, (1, 2, 3))]),  # lowest index
        ("best-fit", 5, [(2, (3, 4, 5, 6, 7))]),
        ("kfabric", 5, [(2, (3, 4, 5, 6, 7))]),
        ("first-fit", 5, [(0, (1, 2, 3, 4, 5))]),
        ("best-fit", 7, [(0, (1, 2, 3, 4, 5, 6, 7))]),
        ("first-fit", 7, [(0, (1, 2, 3, 4, 5, 6, 7))]),
        ("fgd", 7, [(0, (1, 2, 3, 4, 5, 6, 7))]),
        ("best-fit", 8, [(3, (0, 1, 2, 3, 4, 5, 6, 7))]),
        ("first-fit", 8, [(3, (0, 1, 2, 3, 4, 5, 6, 7))]),
        ("fgd", 8, [(3, (0, 1, 2, 3, 4, 5, 6, 7))]),
    ],
    ids=lambda v: str(v) if not isinstance(v, list) else "",
)
def test_single_node_whole_gpus(policy: str, gpus: int, expected: list[tuple[int, tuple[int, ...]]]) -> None:
    cap = _partly_used()
    assert nodes_gpus(place(policy, cap, a_job("j").gpus(gpus).build())) == expected


@pytest.mark.parametrize("job_id", ["a", "b", "c", "d", "e", "f"])
def test_fgd_breaks_ties_between_nodes_pseudo_randomly_by_job(job_id: str) -> None:
    """7 -> 4 and 8 -> 5 free both still fit another 3-GPU task: no fragmentation grows on either, a tie.
    FGD breaks ties at random; here by a hash of the job id, so the same inputs give the same placement."""
    cap = _partly_used()
    job = a_job(job_id).gpus(3).build()
    found = nodes_gpus(place("fgd", cap, job))
    assert found in ([(0, (1, 2, 3))], [(3, (0, 1, 2))])
    assert nodes_gpus(place("fgd", cap, job)) == found


def test_fgd_ties_go_to_more_than_one_node() -> None:
    cap = _partly_used()
    chosen = set()
    for i in range(12):
        found = place("fgd", cap, a_job(f"j{i}").gpus(3).build())
        assert found is not None
        chosen.add(found.shares[0].node)
    assert chosen == {0, 3}


@pytest.mark.parametrize(
    ("policy", "expected_nodes"),
    [("best-fit", {3}), ("kfabric", {3}), ("first-fit", {0}), ("fgd", {0, 1, 3})],  # fgd: a tie, see above
    ids=["best-fit", "kfabric", "first-fit", "fgd"],
)
def test_a_full_node_comes_from_a_broken_rack_before_a_whole_one(policy: str, expected_nodes: set[int]) -> None:
    cap = online_capacity(hgx_fleet())
    use(cap, 2, 1)  # rack 1 = nodes {2, 3} is broken; rack 0 is whole
    found = nodes_gpus(place(policy, cap, a_job("j").gpus(8).build()))
    assert found is not None and found[0][0] in expected_nodes and found[0][1] == tuple(range(8))


@pytest.mark.parametrize("policy", ["best-fit", "kfabric"], ids=["best-fit", "kfabric"])
def test_small_jobs_keep_whole_racks_whole(policy: str) -> None:
    cap = online_capacity(hgx_fleet(nodes=8))
    use(cap, 5, 8)  # rack 2 = {4, 5}: node 4 is free but its rack is broken
    found = place(policy, cap, a_job("j").gpus(2).build())
    assert nodes_gpus(found) == [(4, (0, 1))]


@pytest.mark.parametrize("policy", ALL)
def test_single_node_none_when_no_node_has_enough_whole_gpus(policy: str) -> None:
    cap = online_capacity(hgx_fleet())
    for n in range(4):
        use(cap, n, 5)
    assert place(policy, cap, a_job("j").gpus(4).build()) is None


@pytest.mark.parametrize("policy", ALL)
def test_partly_used_gpus_are_not_whole(policy: str) -> None:
    cap = online_capacity(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    use(cap, 0, 8, milli=100)  # every GPU shared
    assert place(policy, cap, a_job("j").gpus(1).build()) is None


@pytest.mark.parametrize("policy", ALL)
def test_down_nodes_are_never_used(policy: str) -> None:
    cap = online_capacity(hgx_fleet())
    for n in (0, 1, 3):
        cap.set_up(n, False)
    assert nodes_gpus(place(policy, cap, a_job("j").gpus(8).build())) == [(2, tuple(range(8)))]
    assert nodes_gpus(place(policy, cap, a_job("j").fraction(500).build())) == [(2, (0,))]


# ---- fractional ------------------------------------------------------------------------------------------------
def _shared() -> Capacity:
    """Node 0 GPU 3 has 500 milli free; node 1 GPU 0 has 800 free; everything else is whole."""
    cap = online_capacity(hgx_fleet())
    use(cap, 0, 1, milli=500, first=3)
    use(cap, 1, 1, milli=200)
    return cap


@pytest.mark.parametrize(
    ("policy", "milli", "expected"),
    [
        ("best-fit", 250, (0, 3)),  # least left over: the already-shared GPU with 500 free
        ("kfabric", 250, (0, 3)),
        ("first-fit", 250, (0, 0)),
        ("best-fit", 500, (0, 3)),  # exact fit
        ("best-fit", 600, (0, 0)),  # BestFit: the node left with the least (node 0), there the tightest GPU
        ("kfabric", 600, (1, 0)),  # equal expected waste (both end with one 600); then the tightest GPU
        ("fgd", 600, (1, 0)),  # 800 -> 200 strands 200 milli; a whole GPU would strand 400
        ("first-fit", 600, (0, 0)),
        ("best-fit", 900, (0, 0)),  # only whole GPUs hold 900; the node with the fewest whole GPUs
        ("first-fit", 900, (0, 0)),
    ],
    ids=lambda v: str(v) if not isinstance(v, tuple) else "",
)
def test_fractional_gpu(policy: str, milli: int, expected: tuple[int, int]) -> None:
    cap = _shared()
    found = place(policy, cap, a_job("f").fraction(milli).build())
    assert found is not None
    (s,) = found.shares
    assert ((s.node, s.gpus[0]), s.gpu_milli) == (expected, milli)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("best-fit", [(0, (7,))]), ("kfabric", [(3, (6,))])],
    ids=["best-fit", "kfabric"],
)
def test_fractional_on_a_shared_gpu_or_the_fullest_node(
    policy: str, expected: list[tuple[int, tuple[int, ...]]]
) -> None:
    """BestFit takes the node left with the least resources; kfabric the already shared GPU (a whole GPU
    opened for a share is expected to waste more)."""
    cap = online_capacity(hgx_fleet())
    use(cap, 0, 7)  # node 0: one whole GPU left
    use(cap, 3, 1, milli=300, first=6)  # node 3 GPU 6: 700 free
    found = place(policy, cap, a_job("f").fraction(250).build())
    assert nodes_gpus(found) == expected


@pytest.mark.parametrize("policy", ALL)
def test_fractional_none_when_no_gpu_has_enough_milli(policy: str) -> None:
    cap = online_capacity(hgx_fleet(nodes=1, nodes_per_rack=1, racks_per_unit=1))
    use(cap, 0, 8, milli=600)
    assert place(policy, cap, a_job("f").fraction(500).build()) is None
    assert place(policy, cap, a_job("f").fraction(400).build()) is not None


# ---- gangs on HGX pools --------------------------------------------------------------------------------------------
def _eight_nodes() -> Capacity:
    """8 HGX nodes, 2 per rack, 2 racks per unit: racks {0,1} {2,3} {4,5} {6,7}; units {0-3} {4-7}."""
    return online_capacity(hgx_fleet(nodes=8))


GANGS = [a_job("g16").gpus(16).build(), a_job("g2x8").shape(2, 8).build()]


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("job", GANGS, ids=["16-gpus", "2x8"])
def test_gang_takes_whole_nodes_of_one_rack(policy: str, job: Job) -> None:
    cap = _eight_nodes()
    use(cap, 0, 1)  # rack 0 broken
    use(cap, 7, 1)  # rack 3 broken
    found = place(policy, cap, job)
    assert nodes_gpus(found) == [(2, tuple(range(8))), (3, tuple(range(8)))]


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("job", GANGS, ids=["16-gpus", "2x8"])
def test_gang_uses_one_unit_when_no_rack_holds_it(policy: str, job: Job) -> None:
    cap = _eight_nodes()
    for n in (0, 3, 4, 7):
        use(cap, n, 2)  # every rack broken; unit 0 full nodes {1, 2}, unit 1 {5, 6}
    use(cap, 4, 4, first=2)  # unit 1 has fewer free GPUs: best fit on units picks it
    found = place(policy, cap, job)
    assert found is not None
    assert node_units(cap, found) == {1}
    assert nodes_gpus(found) == [(5, tuple(range(8))), (6, tuple(range(8)))]


@pytest.mark.parametrize("policy", ALL)
def test_gang_spans_units_when_no_unit_holds_it(policy: str) -> None:
    cap = _eight_nodes()
    for n in (0, 1, 2, 4, 5, 6):
        use(cap, n, 8)
    found = place(policy, cap, a_job("g").gpus(16).build())
    assert nodes_gpus(found) == [(3, tuple(range(8))), (7, tuple(range(8)))]


@pytest.mark.parametrize("policy", ALL)
def test_gang_with_a_remainder_best_fits_the_partial_node(policy: str) -> None:
    cap = _eight_nodes()
    use(cap, 3, 4)  # rack 1: node 2 full, node 3 has 4 free -> holds 8 + 4 exactly
    found = place(policy, cap, a_job("g").gpus(12).build())
    assert nodes_gpus(found) == [(2, tuple(range(8))), (3, (4, 5, 6, 7))]


@pytest.mark.parametrize("policy", ALL)
def test_gang_of_partial_nodes_by_shape(policy: str) -> None:
    cap = _eight_nodes()
    for n in range(8):
        use(cap, n, 4 if n in (4, 5) else 6)  # only rack 2 has two nodes with 4 free
    found = place(policy, cap, a_job("g").shape(2, 4).build())
    assert nodes_gpus(found) == [(4, (4, 5, 6, 7)), (5, (4, 5, 6, 7))]


@pytest.mark.parametrize(
    ("level", "expect_racks"),
    [
        (MinTopology.ANY, {0, 1}),
        (MinTopology.CLUSTER, {0, 1}),
        (MinTopology.UNIT, {0, 1}),
        (MinTopology.RACK, None),
    ],
    ids=["any", "cluster", "unit", "rack"],
)
@pytest.mark.parametrize("policy", ALL)
def test_min_topology_rack_is_never_split_across_racks(
    policy: str, level: MinTopology, expect_racks: set[int] | None
) -> None:
    cap = _eight_nodes()
    for n in (1, 3, 4, 5, 6, 7):
        use(cap, n, 1)  # free full nodes: 0 (rack 0) and 2 (rack 1), both in unit 0
    found = place(policy, cap, a_job("g").gpus(16).topology(level).build())
    if expect_racks is None:
        assert found is None
    else:
        assert found is not None
        assert node_racks(cap, found) == expect_racks


@pytest.mark.parametrize(
    ("level", "expect_units"),
    [(MinTopology.ANY, {0, 1}), (MinTopology.UNIT, None)],
    ids=["any", "unit"],
)
@pytest.mark.parametrize("policy", ALL)
def test_min_topology_unit_is_never_split_across_units(
    policy: str, level: MinTopology, expect_units: set[int] | None
) -> None:
    cap = _eight_nodes()
    for n in (1, 2, 3, 5, 6, 7):
        use(cap, n, 1)  # free full nodes: 0 (unit 0) and 4 (unit 1)
    found = place(policy, cap, a_job("g").gpus(16).topology(level).build())
    if expect_units is None:
        assert found is None
    else:
        assert found is not None
        assert node_units(cap, found) == expect_units


@pytest.mark.parametrize("policy", ALL)
def test_gang_all_or_nothing(policy: str) -> None:
    cap = _eight_nodes()
    for n in range(7):
        use(cap, n, 8)
    # 8 GPUs free in the pool, a 16-GPU gang asks twice that: nothing, and capacity untouched (checked by place)
    assert place(policy, cap, a_job("g").gpus(16).build()) is None
    assert place(policy, cap, a_job("g").shape(2, 4).build()) is None
    check_invariants(cap)


# ---- NVL72-like pools ----------------------------------------------------------------------------------------
def _nvl72(racks: int = 3) -> Capacity:
    """4 GPUs per tray, 18 trays per rack = one 72-GPU NVLink domain per rack."""
    fleet = (
        a_fleet()
        .pool("gb", model="GB200", gpus_per_node=4, nodes=18 * racks, nodes_per_rack=18, racks_per_unit=2, domain=72)
        .build()
    )
    return online_capacity(fleet)


@pytest.mark.parametrize(
    "level", [MinTopology.ANY, MinTopology.NVLINK, MinTopology.RACK], ids=["any", "nvlink", "rack"]
)
@pytest.mark.parametrize("policy", ALL)
def test_nvl72_gang_of_72_fills_one_rack(policy: str, level: MinTopology) -> None:
    cap = _nvl72()
    use(cap, 5, 1)  # rack 0 broken: the gang goes to the first whole rack
    found = place(policy, cap, a_job("g").gpus(72).topology(level).build())
    assert found is not None
    assert [s.node for s in found.shares] == list(range(18, 36))
    assert node_racks(cap, found) == {1}


@pytest.mark.parametrize("policy", ALL)
def test_nvl72_nvlink_gang_larger_than_a_domain_is_refused(policy: str) -> None:
    cap = _nvl72()
    job = a_job("g").gpus(76).topology(MinTopology.NVLINK).build()
    assert not topology_ok(job, cap.pools[0])
    assert place(policy, cap, job) is None


@pytest.mark.parametrize("policy", ALL)
def test_nvl72_small_gang_goes_to_the_fullest_rack(policy: str) -> None:
    cap = _nvl72()
    for n in range(18, 30):
        use(cap, n, 4)  # rack 1: 6 trays free
    found = place(policy, cap, a_job("g").gpus(16).topology(MinTopology.NVLINK).build())
    assert found is not None
    assert node_racks(cap, found) == {1}
    assert [s.node for s in found.shares] == [30, 31, 32, 33]


@pytest.mark.parametrize("policy", ALL)
def test_nvlink_gang_stays_inside_one_domain_smaller_than_the_rack(policy: str) -> None:
    # NVL36x2-like: 36-GPU domains (9 trays), two per 18-tray rack
    fleet = (
        a_fleet()
        .pool("gb", model="GB200", gpus_per_node=4, nodes=18, nodes_per_rack=18, racks_per_unit=1, domain=36)
        .build()
    )
    cap = online_capacity(fleet)
    use(cap, 0, 1)  # domain 0 (trays 0-8) broken; domain 1 (trays 9-17) whole
    found = place(policy, cap, a_job("g").gpus(36).topology(MinTopology.NVLINK).build())
    assert found is not None
    assert [s.node for s in found.shares] == list(range(9, 18))


# ---- CPU and memory ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "job", "expected_node"),
    [
        ("best-fit", a_job("c").gpus(2).cpu(20_000).build(), 1),
        ("kfabric", a_job("c").gpus(2).memory(300_000).build(), 1),
        ("first-fit", a_job("c").gpus(2).cpu(20_000).build(), 1),
        ("fgd", a_job("c").gpus(2).cpu(20_000).build(), 1),
        ("best-fit", a_job("c").fraction(500).cpu(20_000).build(), 1),
        ("first-fit", a_job("c").fraction(500).memory(300_000).build(), 1),
        ("fgd", a_job("c").fraction(500).cpu(20_000).build(), 1),
    ],
    ids=["best-fit-cpu", "kfabric-mem", "first-fit-cpu", "fgd-cpu", "best-fit-frac", "first-fit-frac", "fgd-frac"],
)
def test_host_cpu_and_memory_constrain_the_node(policy: str, job: Job, expected_node: int) -> None:
    fleet = hgx_fleet(nodes=2, nodes_per_rack=2, racks_per_unit=1, cpu_milli=64_000, memory_mib=512_000)
    cap = online_capacity(fleet)
    use(cap, 0, 6, cpu=50_000, mem=300_000)  # node 0: 2 GPUs, 14k CPU, 212k MiB free
    found = place(policy, cap, job)
    assert found is not None
    (s,) = found.shares
    assert (s.node, s.cpu_milli, s.memory_mib) == (expected_node, job.cpu_milli, job.memory_mib)


@pytest.mark.parametrize("policy", ALL)
def test_default_host_share_per_gpu_comes_from_the_request(policy: str) -> None:
    fleet = hgx_fleet(nodes=2, nodes_per_rack=2, racks_per_unit=1, cpu_milli=64_000)
    cap = online_capacity(fleet)
    use(cap, 0, 4, cpu=60_000)  # node 0: 4 GPUs free but 4k CPU
    found = place(policy, cap, a_job("j").gpus(4).build(), cpu=4_000, mem=1_000)
    assert found is not None
    (s,) = found.shares
    assert (s.node, s.cpu_milli, s.memory_mib) == (1, 16_000, 4_000)


@pytest.mark.parametrize("policy", ALL)
def test_gang_splits_its_host_request_over_nodes(policy: str) -> None:
    cap = _eight_nodes()
    found = place(policy, cap, a_job("g").gpus(16).cpu(32_000).memory(64_000).build())
    assert found is not None
    assert [(s.cpu_milli, s.memory_mib) for s in found.shares] == [(16_000, 32_000), (16_000, 32_000)]


@pytest.mark.parametrize("policy", ALL)
def test_gang_skips_nodes_without_host_room(policy: str) -> None:
    cap = _eight_nodes()
    use(cap, 0, 0, cpu=100_000)  # node 0: all GPUs free, CPU almost gone
    use(cap, 2, 0, cpu=100_000)
    found = place(policy, cap, a_job("g").gpus(16).cpu(32_000).build())
    assert found is not None
    assert [s.node for s in found.shares] == [4, 5]


@pytest.mark.parametrize(
    ("policy", "expected_nodes"),
    [("best-fit", {2}), ("kfabric", {2}), ("first-fit", {2}), ("fgd", {0, 2, 3})],  # fgd: no node fragments more
    ids=["best-fit", "kfabric", "first-fit", "fgd"],
)
def test_cpu_only_job_best_fits_cpu(policy: str, expected_nodes: set[int]) -> None:
    cap = online_capacity(hgx_fleet())
    use(cap, 1, 0, cpu=105_000)  # 7k CPU left: too little
    use(cap, 2, 0, cpu=90_000)  # 22k left: the tightest that fits
    found = place(policy, cap, a_job("c").gpus(0).cpu(10_000).memory(1_000).build())
    assert found is not None and found.gpu_milli_total == 0
    assert [s.gpus for s in found.shares] == [()] and found.shares[0].node in expected_nodes


# ---- several pools; heterogeneity ------------------------------------------------------------------------------
def _three_models() -> Capacity:
    fleet = (
        a_fleet()
        .pool("b200", model="B200", nodes=2, nodes_per_rack=2, racks_per_unit=1)
        .pool("h100", model="H100", nodes=2, nodes_per_rack=2, racks_per_unit=1)
        .pool("rtx", model="RTX", nodes=2, nodes_per_rack=2, racks_per_unit=1)
        .build()
    )
    return online_capacity(fleet)


@pytest.mark.parametrize(
    ("speed", "expected"),
    [
        (None, [2, 1, 0]),  # equal work per SU: the cheapest model first
        ({0: 4.0}, [0, 2, 1]),  # B200 does 4x the work at 2x the SUs: best work per SU
        ({0: 2.0, 1: 1.0, 2: 0.5}, [2, 1, 0]),  # speed proportional to SU weight: tie, cheaper first
        ({2: 0.25}, [1, 0, 2]),  # RTX at a quarter speed for half the SUs: worst
    ],
    ids=["no-speed", "b200-fast", "proportional", "rtx-slow"],
)
def test_prefer_pools_order(speed: dict[int, float] | None, expected: list[int]) -> None:
    cap = _three_models()
    req = PlaceRequest(a_job("j").gpus(1).build(), [0, 1, 2], speed=speed)
    assert prefer_pools(cap, req) == expected


@pytest.mark.parametrize(
    ("policy", "pools", "expected_pool"),
    [
        ("kfabric", [0, 1, 2], "rtx"),
        ("best-fit", [0, 1, 2], "b200"),
        ("first-fit", [1, 0, 2], "h100"),
        ("fgd", [2, 1, 0], "rtx"),
        ("kfabric", [0, 1], "h100"),
    ],
    ids=[
        "kfabric-reorders",
        "best-fit-request-order",
        "first-fit-request-order",
        "fgd-request-order",
        "kfabric-subset",
    ],
)
def test_pools_are_tried_in_policy_order(policy: str, pools: list[int], expected_pool: str) -> None:
    cap = _three_models()
    found = place(policy, cap, a_job("j").gpus(2).build(), pools=pools)
    assert found is not None and found.pool == expected_pool


@pytest.mark.parametrize("policy", ALL)
def test_falls_through_to_the_next_pool_when_the_first_is_full(policy: str) -> None:
    cap = _three_models()
    for n in (4, 5):
        use(cap, n, 8)  # rtx full
    found = place(policy, cap, a_job("j").gpus(2).build(), pools=[2, 1])
    assert found is not None and found.pool == "h100"


# ---- shapes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("job", "gpus_per_node", "expected"),
    [
        (a_job("j").gpus(3).build(), 8, [3]),
        (a_job("j").gpus(8).build(), 8, [8]),
        (a_job("j").gpus(20).build(), 8, [8, 8, 4]),
        (a_job("j").gpus(72).build(), 4, [4] * 18),
        (a_job("j").shape(2, 4).build(), 8, [4, 4]),
        (a_job("j").shape(2, 8).build(), 4, None),
        (a_job("j").gpus(1).build(), 0, None),
    ],
    ids=["3-of-8", "8-of-8", "20-of-8", "72-of-4", "2x4-of-8", "2x8-of-4", "cpu-pool"],
)
def test_node_counts(job: Job, gpus_per_node: int, expected: list[int] | None) -> None:
    assert node_counts(job, gpus_per_node) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("best-fit", (1, (2, 3))), ("kfabric", (1, (2, 3))), ("fgd", (1, (2, 3))), ("first-fit", (0, (4, 5)))],
    ids=["best-fit", "kfabric", "fgd", "first-fit"],
)
def test_nvlink_job_stays_inside_one_in_node_domain(policy: str, expected: tuple[int, tuple[int, ...]]) -> None:
    # 8-GPU nodes with two 4-GPU NVLink domains each (GPUs 0-3 and 4-7)
    cap = online_capacity(hgx_fleet(nodes=2, racks_per_unit=1, domain=4))
    use(cap, 0, 3)  # node 0: domain 0 has GPU 3 free, domain 1 is whole
    use(cap, 1, 2)  # node 1: domain 0 has GPUs 2-3 free
    use(cap, 1, 2, first=6)  # node 1: domain 1 has GPUs 4-5 free
    # best fit: the tightest domain that holds the job; first fit: the first domain that does
    assert nodes_gpus(place(policy, cap, a_job("j").gpus(2).topology(MinTopology.NVLINK).build())) == [expected]
    four = a_job("k").gpus(4).topology(MinTopology.NVLINK).build()
    assert nodes_gpus(place(policy, cap, four)) == [(0, (4, 5, 6, 7))]
    assert place(policy, cap, a_job("k").gpus(5).topology(MinTopology.NVLINK).build()) is None
    # without the NVLink constraint the job may straddle domains
    assert place(policy, cap, a_job("k").gpus(5).build()) is not None
