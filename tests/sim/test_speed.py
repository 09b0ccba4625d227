"""GPU generations in the twin: a job's run time depends on the model it runs on (docs/gpu-speeds.md)."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import pytest

from kfabric.model import Job, PriorityClass
from kfabric.scenarios.loader import load_gpu_catalog, load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import simulate
from kfabric.sim.speed import RunTimeScale, type_tables
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.philly import DEFAULT_GAVEL_DIR, DEFAULT_THROUGHPUTS, load_throughputs, read_gavel

START = date(2026, 1, 1)
CATALOG = load_gpu_catalog()
needs_trace = pytest.mark.skipif(not DEFAULT_THROUGHPUTS.exists(), reason=f"not present: {DEFAULT_THROUGHPUTS}")


def one_job(model: str, run_s: float, limit_s: float, reference: str | None = "H100", name: str = "train") -> Workload:
    job = Job(id="j", project="p", name=name, gpus=8, time_limit_s=limit_s, gpu_models=(model,), submit_s=10.0)
    return Workload("one", [SimJob(job, run_s)], reference_model=reference)


def run_one(workload: Workload, scenario: str = "lab", tmp: Path | None = None) -> dict[str, str]:
    options = SimOptions(start=START, failures_per_gpu_s=0.0, interval_s=60.0)
    simulate(load_scenario(scenario), workload, PRESETS["fifo"], options, out_dir=tmp, wall_clock=lambda: 0.0)
    assert tmp is not None
    with (tmp / "jobs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize(
    ("model", "reference", "factor"),
    [
        ("H100", "H100", 1.0),  # on its reference model a job runs its true run time
        ("RTX-PRO-6000", "H100", 1.0 / CATALOG["RTX-PRO-6000"].relative_speed),  # slower model: longer
        ("H100", None, 1.0),  # a workload without a reference model: run times do not depend on the model
        ("RTX-PRO-6000", None, 1.0),
    ],
    ids=["h100-reference", "rtx-slower", "no-reference-h100", "no-reference-rtx"],
)
def test_run_time_scales_by_the_speed_ratio(model: str, reference: str | None, factor: float, tmp_path: Path) -> None:
    run_s = 3600.0
    row = run_one(one_job(model, run_s, limit_s=30 * 86_400, reference=reference), tmp=tmp_path)
    assert row["state"] == "succeeded" and row["gpu_model"] == model
    assert float(row["end_s"]) - float(row["start_s"]) == pytest.approx(run_s * factor, abs=0.2)
    assert float(row["run_s"]) == run_s  # the record keeps the workload's truth (on the reference model)


@pytest.mark.parametrize(
    ("model", "limit_s", "state", "ran_s"),
    [
        ("H100", 5_000.0, "succeeded", 3_600.0),  # 3,600 s on the reference model fits the limit
        ("RTX-PRO-6000", 5_000.0, "timeout", 5_000.0),  # 3,600 / 0.52 = 6,923 s does not: killed at the limit
        ("RTX-PRO-6000", 8_000.0, "succeeded", 3_600.0 / CATALOG["RTX-PRO-6000"].relative_speed),
    ],
    ids=["fits-on-h100", "killed-on-rtx", "fits-on-rtx-with-longer-limit"],
)
def test_time_limit_kills_use_the_scaled_run_time(
    model: str, limit_s: float, state: str, ran_s: float, tmp_path: Path
) -> None:
    row = run_one(one_job(model, 3_600.0, limit_s=limit_s), tmp=tmp_path)
    assert row["state"] == state
    assert float(row["end_s"]) - float(row["start_s"]) == pytest.approx(ran_s, abs=0.2)


@pytest.mark.parametrize(
    ("reference", "model", "expected"),
    [
        ("H100", "B200", 1.0 / 2.0),  # twice as fast: half the time
        ("H100", "GB300", 1.0 / CATALOG["GB300"].relative_speed),
        ("B200", "H100", 2.0),  # a workload stated on B200 runs twice as long on H100
        ("H100", "H100", 1.0),
        (None, "B200", 1.0),
    ],
)
def test_factor_is_reference_speed_over_model_speed(reference: str | None, model: str, expected: float) -> None:
    models = [CATALOG[m] for m in ("H100", "B200", "GB300")]
    scale = RunTimeScale(models, reference)
    job = Job(id="j", project="p", time_limit_s=60.0, name="anything")
    assert scale.factor(job, model) == pytest.approx(expected)


def test_a_reference_model_outside_the_fleet_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"reference model 'V100'.*fix:"):
        RunTimeScale([CATALOG["B200"]], "V100")


def test_preempted_work_is_kept_across_attempts_in_reference_seconds(tmp_path: Path) -> None:
    """Low-priority jobs stated on RTX run on the faster H100 pool, are preempted at 4,000 s (checkpoint at
    3,600 s) and resume: the work they did (GPU time held minus GPU time lost) is exactly their run time on H100."""
    factor = CATALOG["RTX-PRO-6000"].relative_speed / CATALOG["H100"].relative_speed
    low = [
        SimJob(
            Job(id=f"low{i}", project="a", gpus=8, time_limit_s=86_400.0, gpu_models=("H100",),
                priority=PriorityClass.LOW, checkpoint_interval_s=1800.0),
            10_000.0,
        )
        for i in range(4)
    ]  # fmt: skip
    urgent = [
        SimJob(
            Job(id=f"hi{i}", project="b", gpus=8, time_limit_s=86_400.0, gpu_models=("H100",), submit_s=4000.0,
                priority=PriorityClass.URGENT),
            3000.0,
        )
        for i in range(4)
    ]  # fmt: skip
    workload = Workload("preempt", low + urgent, reference_model="RTX-PRO-6000")
    options = SimOptions(start=START, failures_per_gpu_s=0.0)
    simulate(load_scenario("lab"), workload, PRESETS["multifactor"], options, out_dir=tmp_path, wall_clock=lambda: 0.0)
    with (tmp_path / "jobs.csv").open() as fh:
        rows = {r["job_id"]: r for r in csv.DictReader(fh)}
    for i in range(4):
        r = rows[f"low{i}"]
        assert r["state"] == "succeeded" and int(r["preemptions"]) == 1 and r["gpu_model"] == "H100"
        useful_s = (float(r["gpu_s"]) - float(r["lost_gpu_s"])) / 8
        assert useful_s == pytest.approx(10_000.0 * factor, abs=1.0)


# ---- per-job-type speeds from Gavel's measured throughputs -----------------------------------------------------
HET = """
name: gavel-het
description: one pool each of K80, P100 and V100 (Gavel's heterogeneous cluster shape, scaled down)
owners:
  - {name: msr, kind: private}
sites:
  - {name: dc, region: us, operator: test, certification: private-cloud, clearance: internal, power_cap_mw: 1.0,
     pue: 1.4}
clusters:
  - {name: c, site: dc, backend: sim}
pools:
  - {name: k80, cluster: c, gpu_model: K80, gpus_per_node: 8, nodes: 2, nvlink_domain_gpus: 1, nodes_per_rack: 2,
     racks_per_unit: 1, node_power_kw: 2.0, owner: msr, sharing: shared, online: 2017-01-01}
  - {name: p100, cluster: c, gpu_model: P100, gpus_per_node: 8, nodes: 2, nvlink_domain_gpus: 1, nodes_per_rack: 2,
     racks_per_unit: 1, node_power_kw: 2.5, owner: msr, sharing: shared, online: 2017-01-01}
  - {name: v100, cluster: c, gpu_model: V100, gpus_per_node: 8, nodes: 2, nvlink_domain_gpus: 8, nodes_per_rack: 2,
     racks_per_unit: 1, node_power_kw: 3.5, owner: msr, sharing: shared, online: 2017-01-01}
"""


@needs_trace
def test_gavel_workload_carries_its_throughputs_and_v100_reference() -> None:
    workload = read_gavel(DEFAULT_GAVEL_DIR, DEFAULT_THROUGHPUTS)
    assert workload.reference_model == "V100"
    assert workload.job_type_throughputs == load_throughputs(DEFAULT_THROUGHPUTS)


@needs_trace
@pytest.mark.parametrize(
    ("job_type", "gpus", "model", "table", "measured_at"),
    [
        ("ResNet-50 (batch size 64)", 1, "K80", "k80", 1),
        ("ResNet-50 (batch size 64)", 4, "P100", "p100", 4),
        ("Transformer (batch size 128)", 2, "K80", "k80", 2),
        ("LM (batch size 20)", 8, "P100", "p100", 8),
        ("LM (batch size 20)", 16, "P100", "p100_unconsolidated", 8),  # spans servers: nearest measured, spread
        ("A3C", 1, "P100", "p100", 1),
    ],
)
def test_type_ratio_is_the_measured_throughput_ratio(
    job_type: str, gpus: int, model: str, table: str, measured_at: int
) -> None:
    raw = json.loads(DEFAULT_THROUGHPUTS.read_text())
    scale = RunTimeScale([CATALOG["K80"], CATALOG["P100"], CATALOG["V100"]], "V100", raw)
    ref_table = "v100_unconsolidated" if table.endswith("_unconsolidated") else "v100"
    key = f"{job_type}|{measured_at}"
    expected = raw[ref_table][key] / raw[table][key]
    job = Job(id="j", project="p", name=job_type, gpus=gpus, time_limit_s=60.0)
    assert scale.factor(job, model) == pytest.approx(expected)
    # not the catalog's generic ratio (which the per-type table overrides)
    assert expected != pytest.approx(CATALOG["V100"].relative_speed / CATALOG[model].relative_speed, rel=1e-3)


@needs_trace
@pytest.mark.parametrize("model", ["K80", "P100", "V100"])
def test_a_philly_job_on_another_generation_runs_total_steps_over_that_throughput(model: str, tmp_path: Path) -> None:
    """The Gavel job's true run time is total_steps / V100 throughput; on K80 or P100 it is total_steps / their
    throughput: the per-job-type table is read by the trace reader and used by the twin."""
    scenario_file = tmp_path / "het.yaml"
    scenario_file.write_text(HET)
    gavel = read_gavel(DEFAULT_GAVEL_DIR, DEFAULT_THROUGHPUTS)
    raw = json.loads(DEFAULT_THROUGHPUTS.read_text())
    chosen = None
    for sj in gavel.jobs:
        key = f"{sj.job.name}|{sj.job.gpus}"
        if sj.job.gpus == 1 and raw["k80"].get(key) and raw["p100"].get(key) and 600 < sj.run_s < 20_000:
            chosen = sj
            break
    assert chosen is not None
    key = f"{chosen.job.name}|1"
    steps = chosen.run_s * raw["v100"][key]
    job = Job(
        id="philly-one",
        project="vc",
        name=chosen.job.name,
        gpus=1,
        gpu_models=(model,),
        time_limit_s=90 * 86_400.0,
        checkpoint_interval_s=1800.0,
    )
    workload = Workload(
        "one", [SimJob(job, chosen.run_s)], reference_model="V100", job_type_throughputs=gavel.job_type_throughputs
    )
    options = SimOptions(start=date(2017, 10, 1), failures_per_gpu_s=0.0)
    simulate(load_scenario(str(scenario_file)), workload, PRESETS["fifo"], options, out_dir=tmp_path / "run")
    with (tmp_path / "run" / "jobs.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["gpu_model"] == model
    expected = steps / raw[model.lower()][key]
    assert float(row["end_s"]) - float(row["start_s"]) == pytest.approx(expected, abs=0.2)


def test_type_tables_key_by_catalog_model_and_skip_unmeasured_entries() -> None:
    packed, spread = type_tables(
        {"v100": {"A|1": 2.0, "A|2": None, "B|1": 0}, "v100_unconsolidated": {"A|16": 9.0}}  # type: ignore[dict-item]
    )
    assert packed == {"V100": {"A": {1: 2.0}}}
    assert spread == {"V100": {"A": {16: 9.0}}}
