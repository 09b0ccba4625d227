"""Gavel's Philly-derived traces: the real files, the throughput rules, time limits and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kfabric.model import PriorityClass
from kfabric.sim.workload import Workload
from kfabric.traces.philly import (
    DEFAULT_GAVEL_DIR,
    DEFAULT_THROUGHPUTS,
    STANDARD_LIMITS_S,
    ThroughputLookup,
    read_gavel,
    user_time_limits,
)

DAY = 86400.0
needs_trace = pytest.mark.skipif(not DEFAULT_GAVEL_DIR.is_dir(), reason=f"trace not present at {DEFAULT_GAVEL_DIR}")


@pytest.fixture(scope="module")
def philly() -> Workload:
    return read_gavel()


@needs_trace
def test_real_traces_merge_fifteen_vcs(philly: Workload) -> None:
    jobs = philly.jobs
    assert len(jobs) == 15_264
    assert len(philly.tenants) == 15
    assert {t.program for t in philly.tenants.values()} == {"philly"}
    assert all(t.project == t.organization == name and t.weight == 1.0 for name, t in philly.tenants.items())
    submits = [j.job.submit_s for j in jobs]
    assert submits == sorted(submits)
    assert len({j.job.id for j in jobs}) == len(jobs)
    assert "derived_throughput=1548" in philly.description
    assert "limit_over_90d=9" in philly.description
    assert {j.job.gpu_models for j in jobs} == {("V100",)}
    assert all(j.job.priority is PriorityClass.NORMAL and j.job.preemptible for j in jobs)
    assert all(j.job.checkpoint_interval_s == 1800 and j.job.nodes is None for j in jobs)
    assert max(j.job.gpus for j in jobs) == 64


@needs_trace
@pytest.mark.parametrize(
    ("job_id", "job_type", "gpus", "steps", "table", "measured_gpus"),
    [
        ("philly-0e4a51-0001", "Transformer (batch size 128)", 1, 95121, "v100", 1),
        ("philly-925e2b-0001", "Transformer (batch size 128)", 8, 51427, "v100", 8),
        # 16 GPUs span two 8-GPU servers: the unconsolidated 8-GPU entry, scaled linearly (x2)
        ("philly-11cb48-1014", "Transformer (batch size 128)", 16, 7398, "v100_unconsolidated", 8),
        # 7 GPUs fit one server: the nearest measured scale factor (8), scaled by 7/8
        ("philly-ee9e8c-1145", "LM (batch size 10)", 7, 14905765, "v100", 8),
    ],
    ids=["measured-1", "measured-8", "derived-16-unconsolidated", "derived-7"],
)
def test_known_job_run_time_and_limit(
    philly: Workload, job_id: str, job_type: str, gpus: int, steps: int, table: str, measured_gpus: int
) -> None:
    throughputs = json.loads(DEFAULT_THROUGHPUTS.read_text())
    steps_per_s = throughputs[table][f"{job_type}|{measured_gpus}"] * gpus / measured_gpus
    index = next(i for i, j in enumerate(philly.jobs) if j.job.id == job_id)
    sim = philly.jobs[index]
    assert (sim.job.name, sim.job.gpus, sim.job.user) == (job_type, gpus, job_id.split("-")[1])
    assert sim.run_s == pytest.approx(steps / steps_per_s)
    u = np.random.default_rng(0).uniform(1.0, 5.0, size=len(philly.jobs))[index]
    assert sim.job.time_limit_s == min(lim for lim in STANDARD_LIMITS_S if lim >= sim.run_s * u)


@pytest.mark.parametrize(
    ("run_s", "expected"),
    [
        (10.0, None),  # a standard limit >= run x U
        (5 * 3600.0, None),
        (80 * DAY, 90 * DAY),  # run x U > 90 days but run fits: 90 days
        (100.2 * DAY, 101 * DAY),  # run itself > 90 days: rounded up to a whole day
    ],
    ids=["seconds", "hours", "capped-90d", "beyond-90d"],
)
def test_user_time_limits(run_s: float, expected: float | None) -> None:
    for seed in range(20):
        limit = float(user_time_limits([run_s], seed)[0])
        u = np.random.default_rng(seed).uniform(1.0, 5.0, size=1)[0]
        assert limit >= run_s
        if expected is not None and run_s * u > 90 * DAY:
            assert limit == expected
        elif expected is None:
            assert limit == min(lim for lim in STANDARD_LIMITS_S if lim >= run_s * u)


TABLE = {"v100": {"A|1": 2.0, "A|4": 10.0}, "v100_unconsolidated": {"A|1": 2.0, "A|4": 6.0}}


@pytest.mark.parametrize(
    ("scale", "steps_per_s", "derived"),
    [(1, 2.0, 0), (4, 10.0, 0), (2, 4.0, 1), (3, 7.5, 1), (16, 24.0, 1)],
    ids=["measured", "measured-4", "tie-takes-smaller", "nearest-4", "multi-server-unconsolidated"],
)
def test_missing_throughputs_scale_linearly_from_the_nearest(scale: int, steps_per_s: float, derived: int) -> None:
    lookup = ThroughputLookup(TABLE, "v100", 8, "t.json")
    assert lookup.steps_per_s("A", scale, ("x.trace", 1)) == pytest.approx(steps_per_s)
    assert lookup.derived == derived


GOOD_ROW = "A\tcmd\t--steps\t1\t100\t5.0\t1\n"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("A\tcmd\t--steps\t1\t100\t5.0\n", "row"),
        ("A\tcmd\t--steps\t1\tmany\t5.0\t1\n", "total_steps"),
        ("A\tcmd\t--steps\t1\t100\tsoon\t1\n", "arrival_time_s"),
        ("A\tcmd\t--steps\t1\t100\t5.0\t0\n", "scale_factor"),
        ("B\tcmd\t--steps\t1\t100\t5.0\t1\n", "job_type"),
    ],
    ids=["six-fields", "steps-text", "arrival-text", "zero-gpus", "unknown-type"],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row: str, field: str) -> None:
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    (tmp_path / "vc1.trace").write_text(GOOD_ROW + row)
    with pytest.raises(ValueError) as err:
        read_gavel(tmp_path, tmp_path / "t.json")
    text = str(err.value)
    assert f"vc1.trace:2: field '{field}'" in text and "fix:" in text


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no \*\.trace files"):
        read_gavel(tmp_path / "nowhere", tmp_path / "t.json")
    (tmp_path / "vc1.trace").write_text(GOOD_ROW)
    with pytest.raises(ValueError, match="cannot read it"):
        read_gavel(tmp_path, tmp_path / "t.json")
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    with pytest.raises(ValueError, match="use one of v100"):
        read_gavel(tmp_path, tmp_path / "t.json", gpu_type="h100")


def test_small_trace_is_deterministic_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    (tmp_path / "vc2.trace").write_text("A\tc\t-s\t1\t40\t3.0\t4\n")
    (tmp_path / "vc1.trace").write_text("A\tc\t-s\t1\t100\t5.0\t1\nA\tc\t-s\t1\t20\t3.0\t2\n")
    w = read_gavel(tmp_path, tmp_path / "t.json", time_limit_seed=7)
    assert [j.job.id for j in w.jobs] == ["philly-vc1-0002", "philly-vc2-0001", "philly-vc1-0001"]
    assert [j.run_s for j in w.jobs] == [5.0, 4.0, 50.0]
    assert "derived_throughput=1" in w.description
    again = read_gavel(tmp_path, tmp_path / "t.json", time_limit_seed=7)
    assert [j.job for j in again.jobs] == [j.job for j in w.jobs]
