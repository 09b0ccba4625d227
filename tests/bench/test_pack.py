"""kfabric.bench.pack: CSV readers and their errors, workload construction, checkpoints, run_pack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kfabric.bench.pack import (
    build_workload,
    checkpoints,
    file_order,
    format_table,
    parse_seeds,
    read_nodes,
    read_pods,
    run_pack,
)
from kfabric.model import MinTopology
from kfabric.model.decision import Placement
from kfabric.model.errors import KfabricError
from kfabric.sched.capacity import Capacity
from kfabric.sched.packing import TaskSpec
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.registry import PLACEMENTS

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase\n"
NODES = NODE_HEADER + "n0,32000,131072,4,V100M16\nn1,16000,65536,2,T4\nn2,64000,262144,0,\n"
PODS = POD_HEADER + (
    "p0,4000,8192,1,1000,,LS,Running\n"
    "p1,2000,4096,1,500,,BE,Running\n"
    "p2,8000,16384,0,0,,BE,Failed\n"
    "p3,8000,32768,2,1000,V100M16|T4,LS,Running\n"
    "p4,1000,2048,1,250,T4,LS,Pending\n"
)
POLICIES = list(PLACEMENTS)
TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "alibaba-openb-2023" / "csv"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_nodes_and_pods(tmp_path: Path) -> None:
    fleet = read_nodes(write(tmp_path, "n.csv", NODES))
    shapes = sorted((p.gpu_model, p.gpus_per_node, p.cpu_milli_per_node, p.memory_mib_per_node) for p in fleet.pools)
    assert shapes == [("T4", 2, 16_000, 65_536), ("V100M16", 4, 32_000, 131_072), ("none", 0, 64_000, 262_144)]
    assert fleet.gpus == 6
    pods = read_pods(write(tmp_path, "p.csv", PODS))
    assert pods[1] == TaskSpec(2000, 4096, 1, 500)
    assert pods[2] == TaskSpec(8000, 16_384)
    assert pods[3] == TaskSpec(8000, 32_768, 2, 1000, ("T4", "V100M16"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing sn, cpu_milli, memory_mib, gpu, model"),
        ("sn,cpu_milli,memory_mib,gpu\nn0,1,1,1\n", "missing model"),
        (NODE_HEADER, "at least one node row"),
        (NODE_HEADER + "n0,lots,1,0,\n", "bad.csv:2 at cpu_milli: expected a whole number, found 'lots'"),
        (NODE_HEADER + "n0,1000,1024,1,A10\nn1,1000,-5,0,\n", "bad.csv:3 at memory_mib: expected a number >= 0"),
        (NODE_HEADER + "n0,1000,1024,2,\n", "bad.csv:2 at model: expected a GPU model for a node with GPUs"),
        (NODE_HEADER + "n0,1000,1024,2,Z9\n", "expected models of the GPU catalog, found Z9"),
    ],
)
def test_bad_node_csv_names_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(KfabricError, match=message) as err:
        read_nodes(path)
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (POD_HEADER + "p0,1000,1024,2,500,,LS,Running\n", "line 2: a task with num_gpu=2 > 1 must ask"),
        (POD_HEADER + "p0,1000,1024,1,0,,LS,Running\n", "line 2: gpu_milli must be in 1..1000"),
        (POD_HEADER + "p0,1000,1024,0,300,,LS,Running\n", "line 2: gpu_milli must be 0"),
        (POD_HEADER + "p0,1000,1024,1.5,1000,,LS,Running\n", "field 'num_gpu' = '1.5' is not a whole"),
        ("name,cpu_milli\np0,1\n", "lacks column.*memory_mib, num_gpu, gpu_milli;"),
    ],
)
def test_bad_pod_csv_is_a_value_error_naming_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=message) as err:
        read_pods(path)
    assert "bad.csv" in str(err.value)


def test_a_multigpu_pod_list_without_gpu_spec_is_read(tmp_path: Path) -> None:
    """The public dataset's ``multigpu`` lists have only name,cpu_milli,memory_mib,num_gpu,gpu_milli."""
    text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,4000,8192,1,1000\np1,88000,327680,8,1000\n"
    assert read_pods(write(tmp_path, "multigpu.csv", text)) == [
        TaskSpec(4000, 8192, 1, 1000),
        TaskSpec(88_000, 327_680, 8, 1000),
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pod file .*nope\.csv' not found"):
        read_pods(tmp_path / "nope.csv")


def test_float_written_integers_are_accepted(tmp_path: Path) -> None:
    pods = read_pods(write(tmp_path, "p.csv", POD_HEADER + "p0,4000.0,8192,1,1000.0,,LS,Running\n"))
    assert pods == [TaskSpec(4000, 8192, 1, 1000)]


def test_workload_has_every_task_and_copies_up_to_the_ratio() -> None:
    trace = [TaskSpec(1000, 0, 1, 500), TaskSpec(1000, 0, 1, 1000), TaskSpec(1000, 0), TaskSpec(1000, 0, 2, 1000)]
    capacity = 10_000
    tasks = build_workload(trace, capacity, 1.3, seed=7)
    total = sum(t.gpu_demand for t in tasks)
    assert total <= 1.3 * capacity
    assert total > 1.3 * capacity - 2000  # stopped at the first copy that would pass the target
    for t in trace:
        assert tasks.count(t) >= 1
    assert build_workload(trace, capacity, 1.3, seed=7) == tasks
    assert build_workload(trace, capacity, 1.3, seed=8) != tasks


def test_workload_of_cpu_only_trace_is_the_trace() -> None:
    trace = [TaskSpec(1000, 0), TaskSpec(2000, 0)]
    assert sorted(build_workload(trace, 1000, 1.3, 1), key=lambda t: t.cpu_milli) == trace


@pytest.mark.parametrize(
    ("percents", "expected"),
    [
        # arrived: 300, 600, 900, 1000, 1000; allocated: 300, 300, 600, 700, 700 (capacity 1000)
        ([10, 30, 31, 60, 90, 100], {10: 30.0, 30: 30.0, 31: 30.0, 60: 30.0, 90: 60.0, 100: 70.0}),
        ([130], {130: 70.0}),  # never reached: the final state
    ],
)
def test_checkpoints(percents: list[int], expected: dict[int, float]) -> None:
    demand = np.array([300, 300, 300, 100, 0])
    allocated = np.array([300, 300, 600, 700, 700])
    assert checkpoints(demand, allocated, 1000, percents) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("42-51", list(range(42, 52))), ("7", [7]), ("1,5,7-9", [1, 5, 7, 8, 9]), (" 3 - 4 ", [3, 4])],
)
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "5-3", "1,,2", "-1", "1-2-3"])
def test_parse_seeds_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad seeds .* write e\.g\. 42-51"):
        parse_seeds(text)


def test_run_pack_shape_and_values(tmp_path: Path) -> None:
    nodes, pods = write(tmp_path, "n.csv", NODES), write(tmp_path, "p.csv", PODS)
    result = run_pack(nodes, pods, 1.3, [1, 2], sorted(POLICIES))
    again = run_pack(nodes, pods, 1.3, [1, 2], sorted(POLICIES))
    assert {n: r["alloc_pct"] for n, r in again["policies"].items()} == {  # same inputs, same placements
        n: r["alloc_pct"] for n, r in result["policies"].items()
    }
    assert set(result) == {"policies"}
    assert set(result["policies"]) == set(POLICIES)
    for r in result["policies"].values():
        assert set(r) == {"alloc_pct", "seconds"}
        assert list(r["alloc_pct"]) == [str(p) for p in range(10, 140, 10)]
        values = list(r["alloc_pct"].values())
        assert all(0 <= v <= 100 for v in values)
        assert values == sorted(values)  # tasks are never removed
        assert r["seconds"] >= 0
    table = format_table(result)
    assert all(name in table for name in POLICIES) and "130%" in table


def test_run_pack_ratio_one_reports_up_to_100(tmp_path: Path) -> None:
    result = run_pack(write(tmp_path, "n.csv", NODES), write(tmp_path, "p.csv", PODS), 1.0, [3], ["first-fit"])
    assert list(result["policies"]["first-fit"]["alloc_pct"])[-1] == "100"


@pytest.mark.parametrize(
    ("ratio", "seeds", "policies", "message"),
    [
        (1.3, [1], ["fgd", "magic"], "unknown policy 'magic'; choose from: first-fit, best-fit, fgd, kfabric"),
        (1.3, [1], [], "no policy given"),
        (0.0, [1], ["fgd"], "bad ratio 0.0"),
        (-1.0, [1], ["fgd"], "bad ratio"),
        (float("nan"), [1], ["fgd"], "bad ratio"),
        (1000.0, [1], ["fgd"], "bad ratio"),
        (1.3, [], ["fgd"], "no seeds given"),
    ],
)
def test_run_pack_rejects_bad_arguments(
    tmp_path: Path, ratio: float, seeds: list[int], policies: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_pack(write(tmp_path, "n.csv", NODES), write(tmp_path, "p.csv", PODS), ratio, seeds, policies)


def test_run_pack_rejects_a_cluster_without_gpus(tmp_path: Path) -> None:
    nodes = write(tmp_path, "n.csv", NODE_HEADER + "n0,1000,1024,0,\n")
    with pytest.raises(ValueError, match="has no GPUs"):
        run_pack(nodes, write(tmp_path, "p.csv", PODS), 1.3, [1], ["fgd"])


@pytest.mark.skipif(not TRACES.is_dir(), reason="the Alibaba openb trace is not beside the project")
def test_best_fit_on_the_real_trace_one_seed() -> None:
    result = run_pack(
        TRACES / "openb_node_list_all_node.csv", TRACES / "openb_pod_list_default.csv", 1.3, [42], ["best-fit"]
    )
    alloc = result["policies"]["best-fit"]["alloc_pct"]
    assert alloc["50"] == pytest.approx(50.0, abs=0.1)  # nothing is dropped this early
    assert 90.0 < alloc["130"] < 95.0  # published BestFit: 93.08 (mean of 10 seeds)


def test_the_bench_drives_the_registered_placements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[PlaceRequest] = []

    def spy(cap: Capacity, req: PlaceRequest) -> Placement | None:
        calls.append(req)
        return PLACEMENTS["kfabric"](cap, req)

    monkeypatch.setitem(PLACEMENTS, "spy", spy)
    nodes, pods = write(tmp_path, "n.csv", NODES), write(tmp_path, "p.csv", PODS)
    result = run_pack(nodes, pods, 1.3, [1], ["spy", "kfabric"])
    assert result["policies"]["spy"]["alloc_pct"] == result["policies"]["kfabric"]["alloc_pct"]
    assert calls and all(r.workload is calls[0].workload for r in calls)  # the trace's task types
    assert all(r.job.min_topology == MinTopology.NODE for r in calls)


def test_requests_list_pools_in_node_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", NODES)
    fleet = read_nodes(path)
    assert [fleet.pools[i].gpu_model for i in file_order(path, fleet)] == ["V100M16", "T4", "none"]
