"""GPU-sharing packing benchmark (the protocol of Weng et al., "Beware of Fragmentation", USENIX ATC'23).

1. Cluster: every node of the node CSV (``sn,cpu_milli,memory_mib,gpu,model``).
2. Workload: every task of the pod CSV (``name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...``), plus
   copies of tasks drawn uniformly at random with replacement from it for as long as the total requested
   GPU milli stays within ``ratio`` x the cluster's GPU milli (drawing stops at the first copy that would
   exceed it).
3. The list is shuffled with the seed; tasks arrive one at a time and are never removed.  A task that fits
   nowhere is dropped.
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

from kfabric.sched.packing import (
    I64,
    POLICIES,
    Cluster,
    NodeSpec,
    PackState,
    TaskSpec,
    make_policy,
    simulate,
    task_spec_problem,
)

NODE_FIELDS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_FIELDS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec")
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


def read_nodes(path: Path) -> list[NodeSpec]:
    """Nodes of a node CSV; ``ValueError`` naming the file, line and field on bad input."""
    nodes = []
    for line, row in _read_rows(path, NODE_FIELDS, "node"):
        gpu = _int_field(path, line, row, "gpu")
        model = (row.get("model") or "").strip()
        if gpu and not model:
            raise ValueError(f"{str(path)!r} line {line}: node has gpu={gpu} but an empty 'model'; name the model")
        nodes.append(
            NodeSpec(
                name=(row.get("sn") or f"line-{line}").strip(),
                cpu_milli=_int_field(path, line, row, "cpu_milli"),
                memory_mib=_int_field(path, line, row, "memory_mib"),
                num_gpu=gpu,
                model=model if gpu else "",
            )
        )
    return nodes


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
        raise ValueError(f"no policy given; choose from: {', '.join(POLICIES)}")
    for p in policies:
        if p not in POLICIES:
            raise ValueError(f"unknown policy {p!r}; choose from: {', '.join(POLICIES)}")


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
    cluster = Cluster(read_nodes(Path(nodes_csv)))
    trace = read_pods(Path(pods_csv))
    capacity = cluster.total_gpu_milli
    if capacity == 0:
        raise ValueError(f"node file {str(nodes_csv)!r} has no GPUs; the benchmark measures GPU allocation")
    last = int(round(ratio * 100, 6))
    percents = list(range(1, last + 1))
    reported = [p for p in percents if p % 10 == 0]
    workloads = {s: build_workload(trace, capacity, ratio, s) for s in seeds}
    result: dict[str, Any] = {"policies": {}}
    for name in policies:
        t0 = time.perf_counter()
        sums = dict.fromkeys(reported, 0.0)
        for seed in seeds:
            tasks = workloads[seed]
            policy_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
            policy = make_policy(name, cluster, trace, policy_rng)
            allocated = simulate(PackState(cluster), tasks, policy)
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
