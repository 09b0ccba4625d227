"""The digital twin: determinism, job conservation, metric definitions, interruptions, golden summaries."""

from __future__ import annotations

import gc
import json
import math
import os
from datetime import date
from pathlib import Path

import pytest

from kfabric.model import Job, PriorityClass
from kfabric.scenarios.loader import load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.metrics import jain, size_class
from kfabric.sim.run import simulate
from kfabric.sim.workload import SimJob, Workload

GOLDEN = Path(__file__).with_name("golden")
START = date(2017, 10, 1)


def toy(n: int = 40, gap_s: float = 120.0) -> Workload:
    """Deterministic small workload on the philly cluster (512 V100): sizes 1-32 GPUs, runs 10 min-8 h."""
    jobs = []
    for i in range(n):
        gpus = (1, 2, 4, 8, 16, 32)[i % 6]
        run = 600.0 * (1 + (i * 7) % 48)
        jobs.append(
            SimJob(
                Job(
                    id=f"t{i:03d}",
                    project=f"vc{i % 3}",
                    name=f"n{i % 5}",
                    user=f"u{i % 4}",
                    gpus=gpus,
                    time_limit_s=run * 2,
                    submit_s=i * gap_s,
                    checkpoint_interval_s=1800.0,
                ),
                run,
            )
        )
    return Workload("toy", jobs)


def run(policy: str, workload: Workload, **opts: object) -> dict[str, object]:
    options = SimOptions(start=START, seed=3, failures_per_gpu_s=0.0, **opts)  # type: ignore[arg-type]
    return simulate(load_scenario("philly"), workload, PRESETS[policy], options, wall_clock=lambda: 0.0).summary


@pytest.mark.parametrize("policy", sorted(PRESETS), ids=sorted(PRESETS))
def test_every_job_finishes_once_and_metrics_follow_their_definitions(policy: str, tmp_path: Path) -> None:
    workload = toy()
    options = SimOptions(start=START, seed=3, failures_per_gpu_s=0.0)
    result = simulate(load_scenario("philly"), workload, PRESETS[policy], options, out_dir=tmp_path)
    s = result.summary
    assert s["jobs_finished"] == len(workload.jobs)
    assert s["jobs_unfinished"] == 0
    rows = (tmp_path / "jobs.csv").read_text().splitlines()[1:]
    assert len(rows) == len(workload.jobs) == len({r.split(",")[0] for r in rows})
    for row in rows:
        f = row.split(",")
        submit, start, end, wait, jct, run_s, slowdown = map(float, (f[4], f[5], f[6], f[7], f[8], f[9], f[10]))
        assert start >= submit and end > start
        assert wait == pytest.approx(start - submit, abs=0.2)
        assert jct == pytest.approx(end - submit, abs=0.2)
        assert slowdown == pytest.approx(max(1.0, jct / max(run_s, 10.0)), rel=1e-3)
        # without interruptions a job runs exactly its true run time
        assert end - start == pytest.approx(run_s, abs=0.2)
    assert 0.0 < float(s["utilization"]) <= 1.0  # type: ignore[arg-type]
    assert json.loads((tmp_path / "summary.json").read_text())["run"]["policy"] == policy


def test_same_inputs_and_seed_give_the_same_run() -> None:
    workload = toy()
    a = run("kfabric", workload)
    b = run("kfabric", workload)
    assert a == b


@pytest.mark.parametrize("frozen_before", [False, True], ids=["nothing-frozen", "caller-froze"])
def test_a_run_gives_the_garbage_collector_back_as_it_found_it(frozen_before: bool) -> None:
    workload = toy(8)
    if frozen_before:
        gc.freeze()
    before = (gc.get_threshold(), gc.get_freeze_count())
    try:
        run("kfabric", workload)
        assert (gc.get_threshold(), gc.get_freeze_count() > 0) == (before[0], frozen_before)
    finally:
        gc.unfreeze()


def test_node_failures_requeue_work_and_count_lost_gpu_hours() -> None:
    workload = toy(30)
    options = SimOptions(start=START, seed=5, failures_per_gpu_s=2e-6, repair_s=1800.0)
    s = simulate(load_scenario("philly"), workload, PRESETS["fifo"], options).summary
    assert s["jobs_finished"] == len(workload.jobs)
    assert float(s["lost_gpu_hours"]) > 0  # type: ignore[arg-type]


def test_priority_preemption_restarts_from_checkpoint() -> None:
    # a full cluster of low-priority 8-GPU jobs, then urgent work arrives
    jobs = [
        SimJob(
            Job(
                id=f"low{i:02d}",
                project="a",
                gpus=8,
                time_limit_s=20_000,
                priority=PriorityClass.LOW,
                checkpoint_interval_s=1800.0,
            ),
            10_000.0,
        )
        for i in range(64)
    ]
    jobs += [
        SimJob(
            Job(id=f"hi{i}", project="b", gpus=8, time_limit_s=4000, submit_s=4000.0, priority=PriorityClass.URGENT),
            3000.0,
        )
        for i in range(4)
    ]
    s = run("multifactor", Workload("preempt", jobs))
    assert s["jobs_finished"] == 68
    victims = int(s["preemptions"])  # type: ignore[call-overload]
    assert victims == 4
    # preempted at 4,000 s, last checkpoint at 3,600 s: each victim loses 400 s on 8 GPUs, the rest is kept
    assert float(s["lost_gpu_hours"]) == pytest.approx(victims * 400 * 8 / 3600)  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "expected"), [([1, 1, 1], 1.0), ([1, 0], 0.5), ([], 1.0), ([2, 2], 1.0)])
def test_jain_index(values: list[float], expected: float) -> None:
    assert jain(values) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gpus", "cls"), [(0.25, "fraction"), (1, "1"), (8, "2-8"), (64, "9-64"), (512, "65-512"), (4096, "513+")]
)
def test_size_classes(gpus: float, cls: str) -> None:
    assert size_class(gpus) == cls


GOLDEN_KEYS = ("jobs_finished", "avg_jct_s", "p99_jct_s", "avg_wait_s", "p999_wait_s", "utilization", "preemptions")


@pytest.mark.parametrize("policy", ["fifo", "multifactor", "kfabric"], ids=["fifo", "multifactor", "kfabric"])
def test_golden_summary(policy: str) -> None:
    """A behaviour change shows as a reviewed diff of tests/sim/golden/<policy>.json (regenerate with
    KFABRIC_UPDATE_GOLDEN=1 pytest tests/sim)."""
    s = run(policy, toy(60, gap_s=60.0))
    got = {k: round(float(s[k]), 3) for k in GOLDEN_KEYS}  # type: ignore[arg-type]
    path = GOLDEN / f"{policy}.json"
    if os.environ.get("KFABRIC_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert got == expected
    assert not math.isnan(got["avg_jct_s"])
