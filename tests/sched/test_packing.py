"""kfabric.sched.packing: fits, baseline choices, FGD's fragmentation measure against its definition, and
properties every registered policy keeps (no oversubscription, GPU shapes) on random clusters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfabric.sched.packing import (
    GPU_MILLI,
    POLICIES,
    Cluster,
    ExpectedWaste,
    FragmentationModel,
    NodeSpec,
    PackState,
    Placement,
    Stranding,
    TaskSpec,
    TaskType,
    make_policy,
    simulate,
    task_types,
)

CPU_ONLY = TaskSpec(4000, 8192)
SHARE_300 = TaskSpec(1000, 1024, 1, 300)
WHOLE_1 = TaskSpec(2000, 4096, 1, 1000)
WHOLE_2 = TaskSpec(2000, 4096, 2, 1000)


def node(name: str, cpu: int = 16_000, mem: int = 65_536, gpus: int = 4, model: str = "A") -> NodeSpec:
    return NodeSpec(name, cpu, mem, gpus, model if gpus else "")


def state_of(*nodes: NodeSpec) -> PackState:
    return PackState(Cluster(list(nodes)))


def place(state: PackState, task: TaskSpec, n: int, gpus: tuple[int, ...] = ()) -> None:
    p = Placement(n, gpus)
    state.check(task, p)
    state.apply(task, p)


def choose(name: str, state: PackState, task: TaskSpec, workload: list[TaskSpec] | None = None) -> Placement:
    policy = make_policy(name, state.cluster, workload or [task], np.random.default_rng(0))
    nodes = np.flatnonzero(state.feasible(task))
    assert len(nodes), "the test expects the task to fit somewhere"
    return policy.choose(state, task, nodes)


# ------------------------------------------------------------------------------------------- fits ---


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (CPU_ONLY, [True, True, False, True]),
        (SHARE_300, [True, True, False, False]),  # node 1 has one GPU with 300 left; node 3 has no GPU
        (TaskSpec(1000, 1024, 1, 400), [True, False, False, False]),
        (WHOLE_1, [True, False, False, False]),
        (WHOLE_2, [True, False, False, False]),
        (TaskSpec(1000, 1024, 4, 1000), [False, False, False, False]),  # 4 whole GPUs on one node: none
        (TaskSpec(1000, 1024, 1, 300, ("B",)), [False, True, False, False]),  # gpu_spec restricts the model
        (TaskSpec(20_000, 1024), [False, False, False, True]),  # CPU constrains
        (TaskSpec(1000, 70_000), [False, False, False, True]),  # memory constrains
    ],
    ids=["cpu-only", "share-300", "share-400", "whole-1", "whole-2", "whole-4", "spec-B", "cpu", "memory"],
)
def test_feasible(task: TaskSpec, expected: list[bool]) -> None:
    s = state_of(
        node("a", gpus=3),
        node("b", gpus=1, model="B"),
        node("c", cpu=500, gpus=2),
        node("d", cpu=32_000, mem=131_072, gpus=0),
    )
    place(s, TaskSpec(0, 0, 1, 700), 1, (0,))
    assert s.feasible(task).tolist() == expected


@pytest.mark.parametrize(
    ("task", "placement", "problem"),
    [
        (SHARE_300, Placement(0, (0, 1)), "distinct GPUs"),
        (WHOLE_2, Placement(0, (1, 1)), "distinct GPUs"),
        (SHARE_300, Placement(0, (5,)), "does not exist"),
        (WHOLE_1, Placement(0, (0,)), "milli free"),
        (SHARE_300, Placement(9, (0,)), "out of range"),
        (TaskSpec(99_000, 0), Placement(0), "does not fit"),
    ],
)
def test_check_rejects_bad_placements(task: TaskSpec, placement: Placement, problem: str) -> None:
    s = state_of(node("a", gpus=4))
    place(s, SHARE_300, 0, (0,))
    with pytest.raises(ValueError, match=problem):
        s.check(task, placement)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((-1, 0, 0, 0), ">= 0"),
        ((0, 0, 0, 500), "must be 0 when num_gpu is 0"),
        ((0, 0, 1, 0), "in 1..1000"),
        ((0, 0, 1, 1200), "in 1..1000"),
        ((0, 0, 2, 500), "whole GPUs"),
    ],
)
def test_task_spec_validation(args: tuple[int, int, int, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TaskSpec(*args)


def test_apply_updates_free_resources_and_allocation() -> None:
    s = state_of(node("a", gpus=4))
    place(s, WHOLE_2, 0, (1, 3))
    place(s, SHARE_300, 0, (0,))
    assert s.gpu_free[0].tolist() == [700, 0, 1000, 0]
    assert (int(s.n_full[0]), int(s.max_free[0]), int(s.gpu_free_total[0])) == (1, 1000, 1700)
    assert (int(s.cpu_free[0]), int(s.mem_free[0])) == (16_000 - 3000, 65_536 - 5120)
    assert s.allocated_gpu_milli == 2300


# -------------------------------------------------------------------------------------- baselines ---


@pytest.mark.parametrize(
    ("policy", "task", "expected"),
    [
        ("first-fit", SHARE_300, Placement(0, (0,))),
        ("first-fit", WHOLE_1, Placement(0, (1,))),
        ("first-fit", CPU_ONLY, Placement(0)),
        # best fit: node 1 is the fuller one (least normalized CPU+memory+GPU left); its tightest GPU is 1
        ("best-fit", SHARE_300, Placement(1, (1,))),
        ("best-fit", WHOLE_1, Placement(1, (0,))),
        ("best-fit", CPU_ONLY, Placement(2)),  # small CPU-only node: least left (0 GPU)
    ],
)
def test_baseline_choices(policy: str, task: TaskSpec, expected: Placement) -> None:
    s = state_of(node("a", gpus=2), node("b", gpus=3), node("c", cpu=8000, mem=16_384, gpus=0))
    place(s, TaskSpec(0, 0, 1, 200), 0, (0,))
    place(s, TaskSpec(8000, 32_768, 1, 600), 1, (1,))
    place(s, TaskSpec(0, 0, 1, 500), 1, (2,))
    assert choose(policy, s, task) == expected


# ---------------------------------------------------------------------------------- fragmentation ---


def brute_frag(state: PackState, n: int, types: list[TaskType], use_memory: bool = False) -> int:
    """FGD's definition, literally: a type that can not run on the node fragments all its free GPU milli;
    otherwise the free milli of each GPU with less free than the type's per-GPU demand is fragmented."""
    c = state.cluster
    free = [int(x) for x in state.gpu_free[n][: c.gpu_count[n]]]
    total = 0
    for t in types:
        s = t.spec
        runs = state.cpu_free[n] >= s.cpu_milli and (not use_memory or state.mem_free[n] >= s.memory_mib)
        if s.num_gpu:
            runs = runs and (not s.gpu_spec or c.model_names[c.model_id[n]] in s.gpu_spec)
            runs = runs and sum(x >= s.gpu_milli for x in free) >= s.num_gpu
        frag = sum(x for x in free if x < s.gpu_milli) if runs else sum(free)
        total += t.weight * frag
    return total


WORKLOAD = [
    TaskSpec(2000, 4096, 1, 1000),
    TaskSpec(2000, 4096, 1, 1000),
    TaskSpec(4000, 8192, 1, 500),
    TaskSpec(1000, 2048, 1, 250),
    TaskSpec(8000, 16_384, 2, 1000),
    TaskSpec(3000, 30_000),
    TaskSpec(1000, 2048, 1, 600, ("B",)),
]


def test_fragmentation_of_a_hand_made_node() -> None:
    # one node, 2 GPUs with 700 and 1000 free, 3000 CPU free.  Types (weight): whole-1 (2) runs, frag 700;
    # 500 (1) needs 4000 CPU: all 1700; 250 (1) runs, nothing < 250; whole-2 (1) can't: 1700; CPU-only (1)
    # runs: 0; model B only (1) on model A: 1700.
    s = state_of(node("a", cpu=6000, mem=60_000, gpus=2))
    place(s, TaskSpec(3000, 0, 1, 300), 0, (0,))
    types = task_types(WORKLOAD)
    model = FragmentationModel(s.cluster, types)
    expected = 2 * 700 + 1700 + 0 + 1700 + 0 + 1700
    assert brute_frag(s, 0, types) == expected
    assert int(model.node_frag(s, np.array([0]))[0]) == expected
    assert model.cluster_frag(s) == pytest.approx(expected / 7)


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeSpec]:
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        gpus = draw(st.integers(0, 4))
        out.append(
            NodeSpec(
                f"n{i}",
                draw(st.sampled_from([2000, 4000, 8000, 16_000])),
                draw(st.sampled_from([8192, 32_768, 65_536])),
                gpus,
                draw(st.sampled_from(["A", "B"])) if gpus else "",
            )
        )
    return out


@st.composite
def tasks(draw: st.DrawFn) -> TaskSpec:
    kind = draw(st.sampled_from(["cpu", "share", "whole"]))
    cpu = draw(st.sampled_from([0, 500, 1000, 3000, 6000]))
    mem = draw(st.sampled_from([0, 1024, 8192, 30_000]))
    spec = draw(st.sampled_from([(), ("A",), ("B",), ("A", "B")]))
    if kind == "cpu":
        return TaskSpec(cpu, mem)
    if kind == "share":
        return TaskSpec(cpu, mem, 1, draw(st.integers(1, 99)) * 10, spec)
    return TaskSpec(cpu, mem, draw(st.integers(1, 4)), GPU_MILLI, spec)


def random_state(nodes: list[NodeSpec], history: list[TaskSpec], seed: int) -> PackState:
    s = PackState(Cluster(nodes))
    simulate(s, history, make_policy("first-fit", s.cluster, history, np.random.default_rng(seed)))
    return s


@settings(max_examples=150, deadline=None)
@given(clusters(), st.lists(tasks(), max_size=25), st.lists(tasks(), min_size=1, max_size=6), st.booleans())
def test_fragmentation_matches_definition(
    nodes: list[NodeSpec], history: list[TaskSpec], workload: list[TaskSpec], use_memory: bool
) -> None:
    s = random_state(nodes, history, 0)
    types = task_types(workload)
    model = FragmentationModel(s.cluster, types, use_memory)
    every = np.arange(len(nodes))
    assert model.node_frag(s, every).tolist() == [brute_frag(s, n, types, use_memory) for n in range(len(nodes))]


def assert_delta_matches(s: PackState, types: list[TaskType], task: TaskSpec) -> None:
    """FragmentationModel.delta equals placing the task on a copy and re-measuring by the definition."""
    model = FragmentationModel(s.cluster, types)
    fit = np.flatnonzero(s.feasible(task))
    if not len(fit):
        return
    delta = model.delta(s, task, fit)
    for i, n in enumerate(fit.tolist()):
        before = brute_frag(s, n, types)
        if task.fractional:
            for g in range(s.cluster.max_gpus):
                if s.gpu_free[n, g] < task.gpu_milli:
                    assert delta[i, g] == np.iinfo(np.int64).max
                    continue
                after = copy.deepcopy(s)
                after.apply(task, Placement(n, (g,)))
                assert delta[i, g] == brute_frag(after, n, types) - before, (n, g)
        else:
            after = copy.deepcopy(s)
            gpus = tuple(int(g) for g in np.flatnonzero(s.gpu_free[n] == GPU_MILLI)[: task.whole_gpus])
            after.apply(task, Placement(n, gpus))
            assert delta[i] == brute_frag(after, n, types) - before, n


@pytest.mark.parametrize(
    "task",
    [SHARE_300, TaskSpec(1000, 1024, 1, 500), WHOLE_1, WHOLE_2, CPU_ONLY, TaskSpec(3000, 0), TaskSpec(0, 0, 1, 600)],
    ids=["share-300", "share-500", "whole-1", "whole-2", "cpu-only", "cpu-3000", "share-600"],
)
def test_fragmentation_delta_on_hand_made_states(task: TaskSpec) -> None:
    # node a: 2 whole GPUs free (a fractional task there breaks the 2-GPU type), 6000 CPU (a 3000-CPU task
    # there makes the 4000-CPU type unable to run); node b: one GPU at 500; node c: model B; d: no GPU
    s = state_of(node("a", cpu=6000, gpus=3), node("b", gpus=2), node("c", gpus=2, model="B"), node("d", gpus=0))
    place(s, TaskSpec(0, 0, 1, 1000), 0, (2,))
    place(s, TaskSpec(0, 0, 1, 500), 1, (0,))
    place(s, TaskSpec(0, 0, 1, 1000), 1, (1,))
    assert_delta_matches(s, task_types(WORKLOAD), task)


@settings(max_examples=150, deadline=None)
@given(clusters(), st.lists(tasks(), max_size=25), st.lists(tasks(), min_size=1, max_size=6), tasks())
def test_fragmentation_delta_matches_placing_and_remeasuring(
    nodes: list[NodeSpec], history: list[TaskSpec], workload: list[TaskSpec], task: TaskSpec
) -> None:
    s = random_state(nodes, history, 0)
    assert_delta_matches(s, task_types(workload + WORKLOAD[4:5]), task)


def test_fgd_prefers_the_gpu_that_fragments_least() -> None:
    # a 250-milli task: into the GPU with 500 free (leaves 250: still usable by 250s) rather than a fresh
    # GPU (its 750 left is a fragment for whole-GPU tasks, the most popular type)
    s = state_of(node("a", gpus=2), node("b", gpus=1))
    place(s, TaskSpec(0, 0, 1, 500), 1, (0,))
    assert choose("fgd", s, TaskSpec(1000, 2048, 1, 250), WORKLOAD) == Placement(1, (0,))


def test_fgd_keeps_whole_gpus_for_gangs() -> None:
    # a whole-GPU task goes to the 1-GPU node, keeping the 2-GPU node free for 2-GPU tasks
    s = state_of(node("a", gpus=2), node("b", gpus=1))
    assert choose("fgd", s, WHOLE_1, WORKLOAD) == Placement(1, (0,))


def test_cluster_frag_cache_follows_placements() -> None:
    s = state_of(node("a", gpus=2), node("b", gpus=2))
    types = task_types(WORKLOAD)
    model = FragmentationModel(s.cluster, types)
    for task, n, g in [(SHARE_300, 0, (0,)), (WHOLE_1, 1, (1,)), (TaskSpec(0, 0, 1, 650), 0, (0,))]:
        model.cluster_frag(s)
        place(s, task, n, g)
        assert model.cluster_frag(s) == pytest.approx(sum(brute_frag(s, i, types) for i in range(2)) / 7)


# ------------------------------------------------------------------------------- kfabric components ---


def test_expected_waste_values() -> None:
    # types 600 (weight 1) and 400 (weight 1): V(x) = x below 400; V(400) = 0.5*400 + 0.5*V(0) = 200;
    # V(600) = 0*600 + 0.5*V(0) + 0.5*V(200) = 100; V(1000) = 0.5*V(400) + 0.5*V(600) = 150
    w = ExpectedWaste([TaskType(TaskSpec(0, 0, 1, 600), 1), TaskType(TaskSpec(0, 0, 1, 400), 1)])
    assert [w.value[x] for x in (0, 399, 400, 600, 1000)] == pytest.approx([0, 399, 200, 100, 150])
    d = w.delta(np.array([[1000, 300]]), 400)
    assert d[0, 0] == pytest.approx(100 - 150)
    assert d[0, 1] == np.inf


def test_expected_waste_without_gpu_types_is_all_free() -> None:
    w = ExpectedWaste([TaskType(CPU_ONLY, 3)])
    assert w.value[[0, 10, 1000]].tolist() == [0, 10, 1000]


@pytest.mark.parametrize(
    ("cpu_free", "mem_free", "stranded"),
    [(8000, 80_000, 0.0), (2000, 80_000, 1500.0), (8000, 8000, 1800.0), (0, 0, 2000.0)],
)
def test_stranding(cpu_free: int, mem_free: int, stranded: float) -> None:
    # the workload needs 4 CPU-milli and 40 MiB per GPU milli
    s = Stranding([TaskSpec(4000, 40_000, 1, 1000)])
    out = s.stranded(np.array([2000]), np.array([cpu_free]), np.array([mem_free]))
    assert out.tolist() == pytest.approx([stranded])


def test_kfabric_sends_cpu_only_tasks_where_no_gpu_is_stranded() -> None:
    # node a: 2 GPUs and just enough CPU for them; the CPU-only task goes to the CPU-rich node b
    workload = [TaskSpec(4000, 4096, 1, 1000), CPU_ONLY]
    s = state_of(node("a", cpu=8000, gpus=2), node("b", cpu=64_000, gpus=2))
    assert choose("kfabric", s, CPU_ONLY, workload).node == 1


def test_kfabric_fills_the_tightest_hole_with_a_shared_task() -> None:
    workload = [TaskSpec(1000, 1024, 1, 470), TaskSpec(1000, 1024, 1, 1000)]
    s = state_of(node("a", gpus=2), node("b", gpus=2))
    place(s, TaskSpec(1000, 1024, 1, 470), 1, (1,))
    assert choose("kfabric", s, TaskSpec(1000, 1024, 1, 470), workload) == Placement(1, (1,))


# -------------------------------------------------------------------------- registry and properties ---


def test_registry_and_unknown_policy() -> None:
    assert {"first-fit", "best-fit", "fgd", "kfabric"} <= set(POLICIES)
    with pytest.raises(ValueError, match="unknown policy 'nope'; choose from: first-fit"):
        make_policy("nope", Cluster([node("a")]), [CPU_ONLY], np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(clusters(), st.lists(tasks(), min_size=1, max_size=40), st.sampled_from(sorted(POLICIES)))
def test_policies_never_oversubscribe_and_respect_gpu_shapes(
    nodes: list[NodeSpec], arrivals: list[TaskSpec], name: str
) -> None:
    s = PackState(Cluster(nodes))
    policy = make_policy(name, s.cluster, arrivals, np.random.default_rng(1))
    for task in arrivals:
        fit = np.flatnonzero(s.feasible(task))
        if not len(fit):
            continue
        p = policy.choose(s, task, fit)
        assert p.node in fit.tolist()
        before = s.gpu_free[p.node].copy()
        s.check(task, p)
        if task.fractional:
            assert len(p.gpus) == 1
        elif task.num_gpu:
            assert len(set(p.gpus)) == task.num_gpu and all(before[g] == GPU_MILLI for g in p.gpus)
        else:
            assert p.gpus == ()
        if task.gpu_spec:
            assert s.cluster.model_names[s.cluster.model_id[p.node]] in task.gpu_spec
        s.apply(task, p)
        assert (s.cpu_free >= 0).all() and (s.mem_free >= 0).all()
        assert (s.gpu_free >= 0).all() and (s.gpu_free <= GPU_MILLI).all()
        assert (s.gpu_free[~s.cluster.present] == 0).all()
        assert s.allocated_gpu_milli == s.cluster.total_gpu_milli - int(s.gpu_free.sum())
