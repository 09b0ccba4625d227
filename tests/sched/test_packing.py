"""Fragmentation-aware single-node placement: the workload model, FGD's measure against its definition,
kfabric's packing score on hand-made capacities, the large-fleet path against the exact one, and trace tasks
in scheduler terms (``sched.packing``)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import a_fleet, online_capacity, use
from hypothesis import given, settings
from hypothesis import strategies as st

from kfabric.model import Job, MinTopology
from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched import bounded, placement, single
from kfabric.sched.arith import ARRAYS, NUMBERS
from kfabric.sched.capacity import Capacity
from kfabric.sched.fragmentation import FragTables, frag_tables, stranded
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.packing import TaskSpec, job_of, workload_of
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.registry import PLACEMENTS
from kfabric.sched.single import Ask
from kfabric.sched.workload import TaskType, Workload, from_task_types, own_shape

GPU = MILLI_PER_GPU


def capacity(*nodes: tuple[int, int, int, str], rack: int = 1) -> Capacity:
    """One pool per ``(gpus, cpu_milli, memory_mib, model)`` node, in order (nodes 0, 1, ...)."""
    fleet = a_fleet()
    for i, (gpus, cpu, mem, model) in enumerate(nodes):
        shape = {"model": model, "gpus_per_node": gpus, "cpu_milli": cpu, "memory_mib": mem}
        fleet.pool(f"p{i}", nodes=1, nodes_per_rack=rack, racks_per_unit=1, **shape)
    return online_capacity(fleet.build())


def put(name: str, cap: Capacity, job: Job, workload: Workload | None = None) -> tuple[int, tuple[int, ...]] | None:
    found = PLACEMENTS[name](cap, PlaceRequest(job, list(range(len(cap.pools))), workload=workload))
    if found is None:
        return None
    (share,) = found.shares
    return share.node, share.gpus


def node_of(name: str, cap: Capacity, job: Job, workload: Workload | None = None) -> int:
    found = put(name, cap, job, workload)
    assert found is not None
    return found[0]


def share(milli: int, cpu: int = 0, mem: int = 0, job_id: str = "j") -> Job:
    return Job(id=job_id, project="a", time_limit_s=1.0, gpus=1, gpu_milli=milli, cpu_milli=cpu, memory_mib=mem)


def whole(gpus: int, cpu: int = 0, mem: int = 0, job_id: str = "j") -> Job:
    return Job(id=job_id, project="a", time_limit_s=1.0, gpus=gpus, cpu_milli=cpu, memory_mib=mem)


# ---- the workload ----------------------------------------------------------------------------------------------
def test_expected_waste_values() -> None:
    # types 600 and 400, equally popular: V(x) = x below 400; V(400) = 0.5*400 + 0.5*V(0) = 200;
    # V(600) = 0.5*V(0) + 0.5*V(200) = 100; V(800) = 0.5*V(200) + 0.5*V(400) = 200; V(1000) = 150
    w = Workload([TaskType(600, 1), TaskType(400, 1)])
    assert [w.waste[x] for x in (0, 399, 400, 600, 800, 1000)] == pytest.approx([0, 399, 200, 100, 200, 150])
    assert w.waste_list == pytest.approx(w.waste.tolist())


def test_expected_waste_without_gpu_types_is_all_free() -> None:
    assert Workload([TaskType(0, 0, 4000)]).waste[[0, 10, 1000]].tolist() == [0, 10, 1000]


def test_cpu_and_memory_per_gpu_milli_count_gpu_tasks_only() -> None:
    w = Workload([TaskType(500, 1, 4000, 8000, weight=2), TaskType(1000, 2, 8000, 0), TaskType(0, 0, 99_000)])
    # GPU milli: 2*500 + 2000 = 3000; CPU 2*4000 + 8000 = 16000; memory 16000
    assert (w.cpu_per_milli, w.mem_per_milli) == pytest.approx((16 / 3, 16 / 3))


def test_workloads_of_the_cycle_and_of_a_job_are_cached() -> None:
    types = ((250, 1, 0.5), (1000, 4, 0.5))
    assert from_task_types(types) is from_task_types(types)
    assert [t.gpu_milli for t in from_task_types(types).types] == [250, 1000]
    assert own_shape(1000, 2, 8000, 0) is own_shape(1000, 2, 8000, 0)
    assert own_shape(1000, 0, 8000, 0).types[0].gpu_milli == 0


@pytest.mark.parametrize(
    ("cpu_free", "mem_free", "expected"),
    [(8000, 80_000, 0.0), (2000, 80_000, 1500.0), (8000, 8000, 1800.0), (0, 0, 2000.0)],
)
def test_stranding(cpu_free: int, mem_free: int, expected: float) -> None:
    # 4 CPU milli and 40 MiB per GPU milli: 2000 free GPU milli need 8000 CPU and 80000 MiB
    out = stranded(ARRAYS, np.array([2000]), np.array([cpu_free]), np.array([mem_free]), 4.0, 40.0)
    assert out.tolist() == pytest.approx([expected])
    assert stranded(NUMBERS, 2000, cpu_free, mem_free, 4.0, 40.0) == out[0]


# ---- FGD's measure against its definition ----------------------------------------------------------------------
def brute_frag(cap: Capacity, node: int, workload: Workload) -> float:
    """F_n = sum_m w_m F_n(m) straight from the definition (module doc of sched.fragmentation)."""
    free = [max(int(f), 0) for f in cap.milli[node]]
    total = sum(free)
    model = cap.pools[int(cap.node_pool[node])].model
    out = 0.0
    for t in workload.types:
        runs = int(cap.cpu_free[node]) >= t.cpu_milli and (not t.gpus or not t.models or model in t.models)
        if not t.gpus:
            usable = total if runs else 0
        elif t.gpu_milli < GPU:
            usable = sum(f for f in free if f >= t.gpu_milli) if runs else 0
        else:
            n_whole = sum(1 for f in free if f == GPU)
            usable = GPU * n_whole if runs and n_whole >= t.gpus else 0
        out += t.weight * (total - usable)
    return out


@st.composite
def capacities(draw: st.DrawFn, max_gpus: int = 4) -> Capacity:
    nodes = [
        (
            draw(st.integers(1, max_gpus)),
            draw(st.sampled_from([4000, 8000, 16_000])),
            draw(st.sampled_from([16_384, 65_536])),
            draw(st.sampled_from(["H100", "RTX"])),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    cap = capacity(*nodes)
    for _ in range(draw(st.integers(0, 10))):
        node = draw(st.integers(0, len(nodes) - 1))
        g = draw(st.integers(0, nodes[node][0] - 1))
        take = draw(st.sampled_from([100, 250, 400, 1000]))
        cpu = draw(st.sampled_from([0, 1000, 3000]))
        if cap.milli[node, g] >= take and cap.cpu_free[node] >= cpu:
            cap.take(node, (g,), take, cpu, 0)
    return cap


@st.composite
def workloads(draw: st.DrawFn, fractions: bool = False) -> Workload:
    types = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["cpu", "share", "whole"]))
        cpu = draw(st.sampled_from([0, 1000, 3000, 6000]))
        models = draw(st.sampled_from([(), ("H100",), ("RTX",)]))
        weight = draw(st.floats(0.01, 5.0)) if fractions else float(draw(st.integers(1, 5)))
        if kind == "cpu":
            types.append(TaskType(0, 0, cpu, weight=weight))
        elif kind == "share":
            types.append(TaskType(draw(st.integers(1, 99)) * 10, 1, cpu, 0, models, weight))
        else:
            types.append(TaskType(GPU, draw(st.integers(1, 4)), cpu, 0, models, weight))
    return Workload(types)


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    kind = draw(st.sampled_from(["cpu", "share", "whole"]))
    cpu = draw(st.sampled_from([0, 500, 2000]))
    mem = draw(st.sampled_from([0, 1024]))
    tie = draw(st.sampled_from(["a", "b", "c"]))
    if kind == "cpu":
        return Ask(0, 0, cpu, mem, tie=tie)
    if kind == "share":
        return Ask(1, draw(st.integers(1, 99)) * 10, cpu, mem, tie=tie)
    return Ask(draw(st.integers(1, 3)), GPU, cpu, mem, tie=tie)


def tables_of(cap: Capacity, workload: Workload) -> tuple[Capacity, FragTables]:
    return cap, frag_tables(workload, cap.gpu_models, cap.milli.shape[1])


@settings(max_examples=120, deadline=None)
@given(capacities(), workloads())
def test_fragmentation_matches_definition(cap: Capacity, workload: Workload) -> None:
    st_, tables = tables_of(cap, workload)
    nodes = np.arange(cap.n_nodes)
    free = single.columns(single.free_milli(cap, nodes))
    total = single.free_milli(cap, nodes).sum(axis=1)
    got = tables.frag(ARRAYS, st_.node_model[nodes], cap.cpu_free[nodes], free, total, cap.whole[nodes])
    assert got.tolist() == pytest.approx([brute_frag(cap, n, workload) for n in range(cap.n_nodes)])


@settings(max_examples=120, deadline=None)
@given(capacities(), workloads(), asks())
def test_fragmentation_delta_matches_placing_and_remeasuring(cap: Capacity, workload: Workload, ask: Ask) -> None:
    tables, nodes, free = fitting_nodes(cap, workload, ask)
    if not nodes.size:
        return
    delta = single.per_slot(tables.growth(ARRAYS, *columns_of(cap, nodes, free), *single.task_of(ask)), ask)
    for i, n in enumerate(nodes.tolist()):
        before = brute_frag(cap, n, workload)
        slots = [g for g in range(free.shape[1]) if free[i, g] >= ask.milli] if ask.share else [0]
        for g in slots:
            taken = (g,) if ask.share else tuple(single.gpus_on(cap, n, ask, 0))
            mark = cap.mark()
            cap.logging = True
            cap.take(n, taken, ask.milli, ask.cpu, ask.mem)
            after = brute_frag(cap, n, workload)
            cap.rollback(mark)
            cap.logging = False
            got = delta[i, g] if ask.share else delta[i]
            assert got == pytest.approx(after - before), (n, g)


def fitting_nodes(cap: Capacity, workload: Workload, ask: Ask) -> tuple[FragTables, np.ndarray, np.ndarray]:
    """The workload's tables, the nodes that hold the ask and their free milli per GPU slot."""
    nodes = single.fitting(cap, np.arange(cap.n_nodes), ask)
    return tables_of(cap, workload)[1], nodes, single.free_milli(cap, nodes)


def columns_of(
    cap: Capacity, nodes: np.ndarray, free: np.ndarray
) -> tuple[object, object, list[object], object, object]:
    """A formula's array-form operands for ``nodes``: GPU model ids, free CPU, slots column by column, their total,
    whole GPUs."""
    return cap.node_model[nodes], cap.cpu_free[nodes], list(single.columns(free)), free.sum(axis=1), cap.whole[nodes]


@settings(max_examples=300, deadline=None)
@given(capacities(max_gpus=8), workloads(fractions=True), asks())
def test_both_forms_of_a_formula_give_the_same_bits(cap: Capacity, workload: Workload, ask: Ask) -> None:
    """Each node's fragmentation, its growth and kfabric's score, computed over all nodes with numpy and for the
    node alone in plain Python (``sched.arith``), are the same float, not merely close: the large-fleet placement
    compares the plain-Python terms where the pool scan compares the array ones."""
    tables, nodes, free = fitting_nodes(cap, workload, ask)
    if not nodes.size:
        return
    frag = tables.frag(ARRAYS, *columns_of(cap, nodes, free))
    growth = single.per_slot(tables.growth(ARRAYS, *columns_of(cap, nodes, free), *single.task_of(ask)), ask)
    score = single.kfabric_score(cap, nodes, ask, workload, free, free.sum(axis=1))
    for i, n in enumerate(nodes.tolist()):
        one = (int(cap.node_model[n]), int(cap.cpu_free[n]), free[i].tolist(), int(free[i].sum()), int(cap.whole[n]))
        assert tables.frag(NUMBERS, *one) == frag[i]
        assert tables.growth(NUMBERS, *one, *single.task_of(ask)) == (growth[i].tolist() if ask.share else [growth[i]])
        mine = single.kfabric_growth(NUMBERS, cap, one[0], one[1], int(cap.mem_free[n]), *one[2:], ask, workload)
        assert mine == (score[i].tolist() if ask.share else [score[i]])


# ---- kfabric's packing score, table-driven -----------------------------------------------------------------------
SHARES = Workload([TaskType(600, 1), TaskType(400, 1)])  # V: 200->200, 400->200, 600->100, 800->200, 1000->150


@pytest.mark.parametrize(
    ("milli", "kfabric", "best_fit", "why"),
    [
        (400, (0, (2,)), (0, (0,)), "1000 -> 600 (V 150 -> 100) beats 600 -> 200 (V 100 -> 200): a 600 fills it"),
        (200, (0, (1,)), (0, (0,)), "800 -> 600 (V 200 -> 100) beats the tightest 600 -> 400 (V 100 -> 200)"),
        (600, (0, (0,)), (0, (0,)), "an exact fit wastes nothing"),
    ],
    ids=["400", "200", "600"],
)
def test_a_share_goes_to_the_gpu_that_wastes_least(
    milli: int, kfabric: tuple[int, tuple[int, ...]], best_fit: tuple[int, tuple[int, ...]], why: str
) -> None:
    cap = capacity((4, 64_000, 65_536, "H100"))
    use(cap, 0, 1, milli=400, first=0)  # GPU 0: 600 free
    use(cap, 0, 1, milli=200, first=1)  # GPU 1: 800 free; GPUs 2, 3 whole
    assert put("kfabric", cap, share(milli), SHARES) == kfabric, why
    assert put("best-fit", cap, share(milli), SHARES) == best_fit


PAIRS = Workload([TaskType(GPU, 1), TaskType(GPU, 2, weight=2.0)])


@pytest.mark.parametrize(
    ("free", "kfabric", "best_fit"),
    [
        ([2, 3], 1, 0),  # 3 -> 2 keeps a pair; 2 -> 1 breaks the only one (best fit takes the fuller node)
        ([1, 2], 0, 0),  # 1 -> 0 empties a node no pair fits anyway
        ([2, 4], 1, 0),  # 4 -> 3 still holds a pair
    ],
    ids=["2-or-3", "1-or-2", "2-or-4"],
)
def test_a_whole_gpu_task_avoids_breaking_a_free_gpu_pair(free: list[int], kfabric: int, best_fit: int) -> None:
    cap = capacity((4, 64_000, 65_536, "H100"), (4, 64_000, 65_536, "H100"))
    for node, n_free in enumerate(free):
        use(cap, node, 4 - n_free)
    assert node_of("kfabric", cap, whole(1), PAIRS) == kfabric
    assert node_of("best-fit", cap, whole(1), PAIRS) == best_fit


HOSTED = Workload([TaskType(GPU, 1, 4000, 0, weight=3.0), TaskType(GPU, 1, 16_000)])  # 7 CPU milli per GPU milli


@pytest.mark.parametrize(
    ("job", "cpu_used", "kfabric", "why"),
    [
        (whole(1, cpu=12_000), [16_000, 0], 1, "node 0 would keep 2 GPUs with 4000 CPU: 1430 more milli stranded"),
        (share(500, cpu=12_000), [16_000, 0], 1, "the same for a share"),
        (whole(1, cpu=2_000), [16_000, 0], 0, "little CPU: node 0 strands nothing more, and is the tighter"),
    ],
    ids=["whole", "share", "light"],
)
def test_a_node_short_of_cpu_is_not_given_work_that_strands_its_gpus(
    job: Job, cpu_used: list[int], kfabric: int, why: str
) -> None:
    cap = capacity((3, 32_000, 65_536, "H100"), (3, 32_000, 65_536, "H100"))
    for node, cpu in enumerate(cpu_used):
        use(cap, node, 0, cpu=cpu)
    assert node_of("kfabric", cap, job, HOSTED) == kfabric, why
    if kfabric == 1:
        assert node_of("best-fit", cap, job, HOSTED) == 0


def test_cpu_only_work_goes_where_no_gpu_is_stranded() -> None:
    cap = capacity((2, 8000, 65_536, "H100"), (0, 64_000, 65_536, "H100"), (2, 64_000, 65_536, "H100"))
    workload = Workload([TaskType(GPU, 1, 4000), TaskType(0, 0, 6000)])
    assert put("kfabric", cap, whole(0, cpu=6000), workload) == (1, ())


def test_without_a_workload_kfabric_packs_for_jobs_of_the_same_shape() -> None:
    cap = capacity((8, 112_000, 65_536, "H100"), (8, 112_000, 65_536, "H100"))
    use(cap, 0, 3)  # 5 free: a 4-GPU job would leave 1; node 1 (8 free) would leave 4, room for another
    assert put("kfabric", cap, whole(4)) == (1, (0, 1, 2, 3))
    assert put("best-fit", cap, whole(4)) == (0, (3, 4, 5, 6))


def test_kfabric_is_deterministic() -> None:
    cap = capacity(*[(4, 64_000, 65_536, "H100")] * 6)
    for job_id in ("a", "b", "c"):
        assert len({put("kfabric", cap, whole(1, job_id=job_id), PAIRS) for _ in range(3)}) == 1


# ---- the large-fleet path ----------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(capacities(), workloads(), asks())
def test_remembered_kfabric_terms_choose_as_the_array_score(cap: Capacity, workload: Workload, ask: Ask) -> None:
    nodes = single.fitting(cap, np.arange(cap.n_nodes), ask)
    if not nodes.size:
        return
    ask = Ask(ask.gpus, ask.milli, ask.cpu, ask.mem, tuple(range(len(cap.pools))), ask.tie)
    memo = PlacementMemo()
    want = single.kfabric(cap, nodes, ask, workload)
    assert bounded.choose(placement.KFABRIC, cap, nodes.tolist(), ask, workload, memo) == want
    # again from the remembered terms alone, and from a mix of remembered and new ones
    assert bounded.choose(placement.KFABRIC, cap, nodes.tolist(), ask, workload, memo) == want
    half = nodes[: max(1, nodes.size // 2)]
    memo.terms.clear()
    bounded.choose(placement.KFABRIC, cap, half.tolist(), ask, workload, memo)
    assert bounded.choose(placement.KFABRIC, cap, nodes.tolist(), ask, workload, memo) == want


@pytest.mark.python_only
@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_a_large_fleet_scores_representatives_pool_by_pool(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = a_fleet().pool("a", gpus_per_node=4, nodes=6, racks_per_unit=1).pool("b", gpus_per_node=4, nodes=2)
    cap = online_capacity(fleet.build())
    use(cap, 1, 3)  # pool a: node 1 has one whole GPU left
    use(cap, 2, 1, milli=700)  # pool a: node 2 GPU 0 has 300 free
    monkeypatch.setattr(placement, "EXACT_SCAN_NODES", 0)
    # one node per count of whole free GPUs (1, 3, 4 in a broken rack), then one of a whole rack (4 or 5)
    few = bounded.bucket_nodes(cap, 0, Ask(1, GPU, 0, 0), 1, 256)
    assert few[:3] == [1, 2, 0] and few[3] in (4, 5) and len(few) == 4
    assert bounded.share_nodes(cap, 0, Ask(1, 250, 0, 0), 1, 256) == [2, 1, 0, few[3]]
    expected = {"first-fit": 0, "best-fit": 1, "fgd": None, "kfabric": 1}[name]
    got = put(name, cap, whole(1))
    assert got is not None and cap.pools[int(cap.node_pool[got[0]])].name == "a"
    if expected is not None:
        assert got[0] == expected
    got = put(name, cap, share(250))
    assert got is not None and (name in ("first-fit", "best-fit", "fgd") or got == (2, (0,)))


# ---- trace tasks in scheduler terms ------------------------------------------------------------------------------
def test_workload_of_a_trace_weighs_task_types_by_count() -> None:
    trace = [TaskSpec(1000, 0, 1, 500), TaskSpec(1000, 0, 1, 500), TaskSpec(2000, 10, 2, 1000, ("T4",))]
    types = {(t.gpu_milli, t.gpus, t.cpu_milli, t.models): t.weight for t in workload_of(trace).types}
    assert types == {(500, 1, 1000, ()): 2.0, (1000, 2, 2000, ("T4",)): 1.0}


@pytest.mark.parametrize(
    ("task", "gpus", "milli"),
    [
        (TaskSpec(1000, 0, 1, 250), 1, 250),
        (TaskSpec(1000, 0, 4, 1000, ("T4",)), 4, 1000),
        (TaskSpec(8000, 64), 0, 1000),
    ],
    ids=["share", "whole", "cpu-only"],
)
def test_a_task_is_a_single_node_job(task: TaskSpec, gpus: int, milli: int) -> None:
    job = job_of(task, "t1")
    assert (job.id, job.gpus, job.gpu_milli, job.gpu_models) == ("t1", gpus, milli, task.gpu_spec)
    assert (job.cpu_milli, job.memory_mib, job.min_topology) == (task.cpu_milli, task.memory_mib, MinTopology.NODE)
    assert job.gpu_milli_total == task.gpu_demand


@pytest.mark.parametrize(
    ("args", "problem"),
    [((-1, 0, 0, 0), ">= 0"), ((0, 0, 0, 5), "must be 0"), ((0, 0, 1, 0), "in 1..1000"), ((0, 0, 2, 500), "whole")],
)
def test_task_spec_validation(args: tuple[int, int, int, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TaskSpec(*args)
