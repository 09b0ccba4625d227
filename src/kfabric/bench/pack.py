"""GPU-sharing packing benchmark (the protocol of Weng et al., "Beware of Fragmentation", USENIX ATC'23).

It measures the placements the scheduler registers (``kfabric.sched.registry.PLACEMENTS``), called exactly as
the scheduling cycle calls them: ``place(capacity, PlaceRequest)`` on a :class:`Capacity` of the node list.

1. Cluster: every node of the node CSV (``sn,cpu_milli,memory_mib,gpu,model``), as the ``openb`` scenario
   builds it (one pool per node shape); a request lists the pools a task may use in the order the file
   first names a node of each (first fit follows it).
2. Workload: every task of the pod CSV (``name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]``), plus
   copies of tasks drawn uniformly at random with replacement from it for as long as the total requested
   GPU milli stays within ``ratio`` x the cluster's GPU milli (drawing stops at the first copy that would
   exceed it).
3. The list is shuffled with the seed; tasks arrive one at a time and are never removed.  A task that fits
   nowhere is dropped.  Each task is a single-node job; the trace's task types are the target workload
   (``PlaceRequest.workload``) that fragmentation-aware placements pack for.
4. Metric: allocated GPU milli / total GPU milli, read as the arrived GPU demand passes each 1% of capacity
   (a percentage the workload never reaches reads the final state); mean over seeds, reported every 10%.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kfabric.model.fleet import Fleet
from kfabric.scenarios.openb import load_openb, read_node_rows
from kfabric.sched.capacity import Capacity
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.packing import GPU_MILLI, TaskSpec, job_of, task_spec_problem, workload_of
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.registry import PLACEMENTS
from kfabric.sched.workload import Workload

I64 = npt.NDArray[np.int64]
#: the columns every openb pod list has (the ``multigpu`` lists have no ``gpu_spec``: any model)
POD_FIELDS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
MAX_RATIO = 10.0
_SEED_PART = re.compile(r"(?P<lo>\d+)(?:\s*-\s*(?P<hi>\d+))?")


def _read_rows(path: Path, fields: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header naming at least ``fields``, as (line number, row)."""
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} not found; pass the path of an existing CSV file")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [f for f in fields if f not in header]
            if missing:
                raise ValueError(
                    f"{what} file {str(path)!r}: header lacks column(s) {', '.join(missing)}; "
                    f"the first line must name the columns {','.join(fields)}"
                )
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{what} file {str(path)!r} can not be read as CSV: {exc}") from exc
    if not rows:
        raise ValueError(f"{what} file {str(path)!r} has no data rows; add at least one row under the header")
    return rows


def _int_field(path: Path, line: int, row: dict[str, str], field: str, *, blank_is_zero: bool = False) -> int:
    raw = (row.get(field) or "").strip()
    if raw == "" and blank_is_zero:
        return 0
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            as_float = float("nan")
        if not as_float.is_integer():
            raise ValueError(
                f"{str(path)!r} line {line}: field {field!r} = {raw!r} is not a whole number; "
                f"write a non-negative integer"
            ) from None
        value = int(as_float)
    if value < 0:
        raise ValueError(f"{str(path)!r} line {line}: field {field!r} = {value} is negative; it must be >= 0")
    return value


def read_nodes(path: Path) -> Fleet:
    """The node CSV as a fleet (the ``openb`` scenario: one pool per node shape, nodes in file order within a
    pool); a bad file raises ``ScenarioError`` naming the file, line and field."""
    return load_openb(Path(path)).fleet


def file_order(path: Path, fleet: Fleet) -> list[int]:
    """The fleet's pools in the order the node CSV first lists a node of each (the order requests give)."""
    first: dict[tuple[str, int, int, int], int] = {}
    for line, (_, cpu, mem, gpus, model) in enumerate(read_node_rows(Path(path))):
        first.setdefault((model, gpus, cpu, mem), line)
    shapes = [(p.gpu_model, p.gpus_per_node, p.cpu_milli_per_node, p.memory_mib_per_node) for p in fleet.pools]
    return sorted(range(len(shapes)), key=lambda i: first.get(shapes[i], len(first)))


def read_pods(path: Path) -> list[TaskSpec]:
    """Tasks of a pod CSV; ``ValueError`` naming the file, line and field on bad input."""
    tasks = []
    for line, row in _read_rows(path, POD_FIELDS, "pod"):
        cpu = _int_field(path, line, row, "cpu_milli")
        mem = _int_field(path, line, row, "memory_mib")
        num_gpu = _int_field(path, line, row, "num_gpu")
        gpu_milli = _int_field(path, line, row, "gpu_milli", blank_is_zero=True)
        problem = task_spec_problem(cpu, mem, num_gpu, gpu_milli)
        if problem:
            raise ValueError(f"{str(path)!r} line {line}: {problem}")
        raw_spec = (row.get("gpu_spec") or "").strip()
        spec = tuple(sorted({s.strip() for s in raw_spec.split("|") if s.strip()})) if num_gpu else ()
        tasks.append(TaskSpec(cpu, mem, num_gpu, gpu_milli, spec))
    return tasks


def build_workload(trace: Sequence[TaskSpec], capacity: int, ratio: float, seed: int) -> list[TaskSpec]:
    """Protocol steps 2-3: the trace plus random copies up to ``ratio`` x ``capacity`` GPU milli, shuffled."""
    rng = np.random.default_rng(seed)
    demand = np.array([t.gpu_demand for t in trace], dtype=np.int64)
    total = int(demand.sum())
    target = ratio * capacity
    picks: list[int] = []
    if demand.max() > 0:
        while True:
            draw = rng.integers(0, len(trace), size=1024)
            cum = total + np.cumsum(demand[draw])
            over = np.flatnonzero(cum > target)
            if len(over):
                picks.extend(draw[: over[0]].tolist())
                break
            picks.extend(draw.tolist())
            total = int(cum[-1])
    tasks = list(trace) + [trace[i] for i in picks]
    order = rng.permutation(len(tasks))
    return [tasks[i] for i in order]


def checkpoints(demand: I64, allocated: I64, capacity: int, percents: Sequence[int]) -> dict[int, float]:
    """Allocation (% of capacity) when the arrived demand first reaches each percentage of capacity."""
    arrived = np.cumsum(demand)
    out = {}
    for p in percents:
        i = int(np.searchsorted(arrived * 100, p * capacity, side="left"))
        i = min(i, len(allocated) - 1)
        out[p] = 100.0 * float(allocated[i]) / capacity
    return out


def parse_seeds(text: str) -> list[int]:
    """``"42-51"`` -> [42, ..., 51]; ``"1,5,7-9"`` -> [1, 5, 7, 8, 9]."""
    seeds: list[int] = []
    for part in text.split(","):
        m = _SEED_PART.fullmatch(part.strip())
        if m is None or (m["hi"] is not None and int(m["hi"]) < int(m["lo"])):
            raise ValueError(
                f"bad seeds {text!r}: {part.strip()!r} is neither a non-negative integer nor a range LO-HI "
                f"with LO <= HI; write e.g. 42-51 or 1,2,5"
            )
        lo = int(m["lo"])
        seeds.extend(range(lo, int(m["hi"]) + 1) if m["hi"] is not None else [lo])
    return seeds


def _check_policies(policies: Sequence[str]) -> None:
    if not policies:
        raise ValueError(f"no policy given; choose from: {', '.join(PLACEMENTS)}")
    for p in policies:
        if p not in PLACEMENTS:
            raise ValueError(f"unknown policy {p!r}; choose from: {', '.join(PLACEMENTS)}")


def online(fleet: Fleet) -> Capacity:
    """An empty capacity index of the fleet with every node up."""
    cap = Capacity(fleet)
    for i in range(len(cap.pools)):
        cap.set_pool_online(i, True)
    return cap


def replay(
    fleet: Fleet,
    tasks: Sequence[TaskSpec],
    policy: str,
    workload: Workload,
    tag: str = "",
    order: Sequence[int] | None = None,
) -> I64:
    """Place ``tasks`` in order with a registered placement (a task that fits nowhere is dropped); return the
    allocated GPU milli after each task. Job ids are ``{tag}{index}``; requests list the pools a task may use
    in ``order`` (default: the fleet's)."""
    place = PLACEMENTS[policy]
    cap = online(fleet)
    memo = PlacementMemo()
    cpu_pools = list(order) if order is not None else list(range(len(cap.pools)))
    gpu_pools = [pi for pi in cpu_pools if cap.pools[pi].gpus_per_node > 0]
    pools: dict[tuple[str, ...], list[int]] = {}
    out = np.empty(len(tasks), dtype=np.int64)
    allocated = 0
    for i, task in enumerate(tasks):
        if not task.num_gpu:
            allowed = cpu_pools
        else:
            allowed = pools.get(task.gpu_spec) or pools.setdefault(
                task.gpu_spec,
                [pi for pi in gpu_pools if not task.gpu_spec or cap.pools[pi].model in task.gpu_spec],
            )
        found = place(cap, PlaceRequest(job_of(task, f"{tag}{i}"), allowed, workload=workload, memo=memo))
        if found is not None:
            for s in found.shares:
                cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            allocated += found.gpu_milli_total
        out[i] = allocated
    return out


def run_pack(nodes_csv: Path, pods_csv: Path, ratio: float, seeds: list[int], policies: list[str]) -> dict[str, Any]:
    """Run the protocol for each policy over ``seeds``.

    Returns ``{"policies": {name: {"alloc_pct": {"10": x, ..., "130": x}, "seconds": s}}}`` where the
    allocation is in percent of the cluster's GPU milli (mean over seeds), reported at each 10% of arrived
    demand up to ``ratio``, and ``seconds`` is the wall time for all seeds of that policy.
    """
    if not isinstance(ratio, int | float) or not 0 < ratio <= MAX_RATIO or ratio != ratio:
        raise ValueError(f"bad ratio {ratio!r}: give the arrived demand as a multiple of capacity in (0, {MAX_RATIO}]")
    if not seeds:
        raise ValueError("no seeds given; pass at least one seed (example: 42-51)")
    _check_policies(policies)
    fleet = read_nodes(Path(nodes_csv))
    order = file_order(Path(nodes_csv), fleet)
    trace = read_pods(Path(pods_csv))
    capacity = fleet.gpus * GPU_MILLI
    if capacity == 0:
        raise ValueError(f"node file {str(nodes_csv)!r} has no GPUs; the benchmark measures GPU allocation")
    last = int(round(ratio * 100, 6))
    reported = [p for p in range(1, last + 1) if p % 10 == 0]
    workload = workload_of(trace)
    workloads = {s: build_workload(trace, capacity, ratio, s) for s in seeds}
    result: dict[str, Any] = {"policies": {}}
    for name in policies:
        t0 = time.perf_counter()
        sums = dict.fromkeys(reported, 0.0)
        for seed in seeds:
            tasks = workloads[seed]
            allocated = replay(fleet, tasks, name, workload, tag=f"s{seed}-", order=order)
            demand = np.array([t.gpu_demand for t in tasks], dtype=np.int64)
            for p, v in checkpoints(demand, allocated, capacity, reported).items():
                sums[p] += v
        seconds = time.perf_counter() - t0
        result["policies"][name] = {
            "alloc_pct": {str(p): round(v / len(seeds), 4) for p, v in sums.items()},
            "seconds": round(seconds, 3),
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: one row per policy, one column per reported arrived-demand percentage."""
    policies: dict[str, Any] = result.get("policies", {})
    if not policies:
        return "(no results)"
    cols = list(next(iter(policies.values()))["alloc_pct"])
    name_w = max(len("policy"), *(len(n) for n in policies))
    head = f"{'policy':<{name_w}} " + " ".join(f"{c + '%':>7}" for c in cols) + f" {'seconds':>8}"
    lines = ["GPU allocation (% of GPU capacity) vs arrived GPU demand (% of capacity)", head, "-" * len(head)]
    for name, r in policies.items():
        vals = " ".join(f"{r['alloc_pct'][c]:7.2f}" for c in cols)
        lines.append(f"{name:<{name_w}} {vals} {r['seconds']:8.2f}")
    return "\n".join(lines)
