"""Honest run metrics (docs/metrics.md): waits over every submitted job with censoring, starvation and rejection
visible, GPU-hours by owner/program/size, demand-aware fairness, and reserved capacity honoured."""

from __future__ import annotations

import csv
import math
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from kfabric.model import Job
from kfabric.scenarios.loader import load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.metrics import JOB_FIELDS, JobRecord, RunFacts, jain, summarize, water_fill
from kfabric.sim.run import simulate
from kfabric.sim.workload import SimJob, Workload

#: the lab fleet with both pools online: 32 H100 (government, shared; vision-lab reserves 8) and 16 RTX PRO 6000
#: (acme, lendable; acme-internal reserves all 16)
START = date(2026, 6, 1)
HOUR_S = 3600.0


def lab_run(workload: Workload, policy: str, days: float = 0.5, out: Path | None = None) -> dict[str, Any]:
    options = SimOptions(start=START, days=days, interval_s=60.0, failures_per_gpu_s=0.0)
    return simulate(load_scenario("lab"), workload, PRESETS[policy], options, out_dir=out).summary


# ---- pure definitions ----------------------------------------------------------------------------------------
def test_water_fill_gives_small_asks_in_full_and_splits_the_rest_by_weight() -> None:
    fair = water_fill(100.0, {"a": 1.0, "b": 1.0, "c": 2.0}, {"a": 10.0, "b": 80.0, "c": 80.0})
    # a asks for less than its level: gets it; b and c share the remaining 90 as 1:2
    assert fair == pytest.approx({"a": 10.0, "b": 30.0, "c": 60.0})
    # enough for everyone: everyone gets its demand
    assert water_fill(1_000.0, {"a": 1.0, "b": 3.0}, {"a": 5.0, "b": 7.0}) == pytest.approx({"a": 5.0, "b": 7.0})
    assert water_fill(10.0, {"a": 1.0}, {"a": 0.0}) == {"a": 0.0}


def record(job_id: str, project: str, gpus: float, submit: float, start: float, end: float, run: float) -> JobRecord:
    state = "succeeded" if math.isfinite(end) else ("running" if math.isfinite(start) else "pending")
    held = (min(end, 100.0) if math.isfinite(end) else 100.0) - start if math.isfinite(start) else 0.0
    return JobRecord(
        job_id, project, gpus, submit, start, end, run, 0, 0.0, held * gpus, held * gpus, state, "p", 100.0
    )


def test_never_started_jobs_are_censored_at_the_window_end_and_counted() -> None:
    jobs = [
        record("a", "x", 1, 0.0, 10.0, 40.0, 30.0),
        record("b", "x", 4, 20.0, 30.0, math.nan, 200.0),  # running at the end
        record("c", "y", 64, 50.0, math.nan, math.nan, 500.0),  # never started
    ]
    facts = RunFacts(jobs, 100.0, 1.0, 1.0, {"x": 0.5, "y": 0.5}, {"x": 1.0}, gpu_s_by_pool={"p": 310.0})
    s: dict[str, Any] = summarize(facts, {})
    assert (s["jobs_submitted"], s["jobs_finished"], s["jobs_unfinished"], s["jobs_never_started"]) == (3, 1, 2, 1)
    assert s["max_wait_s"] == 50.0  # c: window end 100 - submit 50, a lower bound
    assert s["avg_wait_s"] == pytest.approx((10.0 + 10.0 + 50.0) / 3)
    assert s["avg_jct_s"] == 40.0  # JCT (end - submit) over finished jobs only
    # slowdown over all three: a 40/30, b (100-20)/200 -> 1, c (100-50)/500 -> 1
    assert s["avg_bounded_slowdown"] == pytest.approx((40 / 30 + 1 + 1) / 3)
    assert s["wait_by_size"]["9-64"] == {
        "jobs": 1,
        "never_started": 1,
        "avg_wait_s": 50.0,
        "p99_wait_s": 50.0,
        "max_wait_s": 50.0,
    }
    assert jobs[2].censored and not jobs[1].censored
    row = dict(zip(JOB_FIELDS, jobs[2].row(), strict=True))
    assert (row["start_s"], row["jct_s"], row["censored"], row["wait_s"]) == ("", "", 1, 50.0)
    # demand: y asked 64 GPUs x 50 s inside the window and got nothing, x got what it asked
    assert s["tenants"]["y"]["delivered_gpu_hours"] == 0.0
    assert s["jain_demand"] < 1.0 and s["jain_entitlement"] == s["jain_index"] == 1.0


# ---- a policy cannot look better by starving work -------------------------------------------------------------
def starving_workload() -> Workload:
    """A 24-GPU job (2 h) behind a steady stream of 30-minute single-GPU jobs that keep ~30 of 32 H100 busy:
    shortest-job-first always has a shorter job to run, FIFO makes the stream wait while the big job runs."""
    jobs = [
        SimJob(Job(id=f"s{i:03d}", project="crowd", gpus=1, gpu_models=("H100",), time_limit_s=HOUR_S,
                   submit_s=60.0 * i), 1800.0)
        for i in range(720)
    ]  # fmt: skip
    big = Job(id="big", project="tinyml-llm", gpus=24, gpu_models=("H100",), time_limit_s=4 * HOUR_S, submit_s=600.5)
    jobs.append(SimJob(big, 2 * HOUR_S))
    return Workload("starve", sorted(jobs, key=lambda j: j.job.submit_s))


def test_starving_a_big_job_shows_in_max_wait_p999_and_never_started(tmp_path: Path) -> None:
    starves = lab_run(starving_workload(), "sjf-oracle", out=tmp_path / "sjf")
    runs_it = lab_run(starving_workload(), "fifo", out=tmp_path / "fifo")
    # the starving policy has the better mean wait (every small job starts at once) ...
    assert starves["avg_wait_s"] < runs_it["avg_wait_s"]
    # ... and the metrics still show what it did
    assert starves["jobs_never_started"] >= 1 and starves["never_started_by_reason"]
    assert runs_it["wait_by_size"]["9-64"]["never_started"] == 0
    assert starves["wait_by_size"]["9-64"]["never_started"] == 1
    window = 0.5 * 86_400.0
    assert starves["max_wait_s"] == pytest.approx(window - 600.5)  # censored at the window's end
    assert starves["max_wait_s"] > runs_it["max_wait_s"]
    assert starves["p999_wait_s"] > runs_it["p999_wait_s"]
    assert starves["jain_demand"] < runs_it["jain_demand"]
    assert starves["gpu_hours_by_size"].get("9-64", 0.0) == 0.0 < runs_it["gpu_hours_by_size"]["9-64"]
    # jobs.csv holds every submitted job; the big one is marked censored with its reason
    with (tmp_path / "sjf" / "jobs.csv").open() as fh:
        rows = {r["job_id"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 721
    assert rows["big"]["censored"] == "1" and rows["big"]["start_s"] == "" and rows["big"]["reason"]
    assert float(rows["big"]["wait_s"]) == pytest.approx(window - 600.5, abs=0.1)


def test_delivered_gpu_hours_add_up_by_owner_program_and_size() -> None:
    s = lab_run(starving_workload(), "fifo")
    total = s["gpu_hours_delivered"]
    assert total > 0
    assert s["utilization"] == pytest.approx(total / (32 * 12 + 16 * 12), rel=1e-6)  # both pools online 12 h
    for key in ("gpu_hours_by_owner", "gpu_hours_by_program", "gpu_hours_by_size"):
        assert sum(s[key].values()) == pytest.approx(total, rel=1e-9), key
    assert set(s["gpu_hours_by_owner"]) == {"government"}  # every job asked for H100


def test_arrivals_under_an_expired_grant_are_rejected_with_their_reason() -> None:
    # lab's vision-lab grant ends 2027-01-01: start the window a day before, submit on both sides of midnight
    jobs = [
        SimJob(Job(id="before", project="vision-lab", gpus=1, time_limit_s=HOUR_S, submit_s=3_600.0), 600.0),
        SimJob(Job(id="after", project="vision-lab", gpus=1, time_limit_s=HOUR_S, submit_s=90_000.0), 600.0),
    ]
    options = SimOptions(start=date(2026, 12, 31), days=2.0, interval_s=60.0, failures_per_gpu_s=0.0)
    s = simulate(load_scenario("lab"), Workload("expiry", jobs), PRESETS["fifo"], options).summary
    assert (s["jobs_submitted"], s["jobs_rejected"], s["rejected_by_reason"]) == (1, 1, {"grant_expired": 1})
    assert s["jobs_arrived"] == 2


# ---- reserved capacity is honoured --------------------------------------------------------------------------
def reservation_workload(case: str) -> Workload:
    """Other work holds the capacity first; at t = 1 h the reservation's owner submits an 8-GPU job that fits
    inside its reservation. ``free``: the reservation is idle (others fill the unreserved H100 with work that
    may not borrow); ``lent-h100``: others borrow the idle reserved H100; ``lent-rtx``: others borrow Acme's
    lendable RTX pool, reserved by acme-internal."""
    model, owner = ("RTX-PRO-6000", "acme-internal") if case == "lent-rtx" else ("H100", "vision-lab")
    fill = {"free": 3, "lent-h100": 4, "lent-rtx": 2}[case]
    jobs = [
        SimJob(
            Job(id=f"other{i}", project="crowd", gpus=8, gpu_models=(model,), time_limit_s=10 * HOUR_S,
                checkpoint_interval_s=600.0, preemptible=case != "free"),
            30_000.0,
        )
        for i in range(fill)
    ]  # fmt: skip
    mine = Job(id="mine", project=owner, gpus=8, gpu_models=(model,), time_limit_s=2 * HOUR_S, submit_s=HOUR_S + 0.5)
    return Workload(case, [*jobs, SimJob(mine, HOUR_S)])


@pytest.mark.parametrize("case", ["free", "lent-h100", "lent-rtx"])
@pytest.mark.parametrize("policy", sorted(PRESETS))
def test_a_job_inside_its_reservation_starts_within_a_cycle_plus_the_grace(case: str, policy: str) -> None:
    s = lab_run(reservation_workload(case), policy)
    owner = "acme-internal" if case == "lent-rtx" else "vision-lab"
    r = s["reservations"][owner]
    assert (r["jobs_fitting"], r["never_started_fitting"]) == (1, 0)
    assert r["max_wait_fitting_s"] <= 60.0 + PRESETS[policy].grace_s  # one cycle interval + the grace period
    assert r["reserved_gpus"] == ({"RTX-PRO-6000": 16} if owner == "acme-internal" else {"H100": 8})
    # 8 GPUs for its 1-hour run, plus the grace period when it waited for a borrower to leave (GPUs held for it)
    assert 8.0 <= r["delivered_gpu_hours"] <= 8.0 * (HOUR_S + PRESETS[policy].grace_s) / HOUR_S + 1e-9
    assert r["demand_gpu_hours"] == pytest.approx(8.0)
    if case == "lent-rtx":
        assert s["preemptions"] >= 1 and s["lent_gpu_hours_by_owner"]["acme"] > 0
    if case == "free":
        assert s["preemptions"] == 0


def test_jain_index_scale_invariance_used_by_jain_demand() -> None:
    assert jain([1.0, 0.5]) == pytest.approx(jain([2.0, 1.0]))


def test_a_job_waiting_behind_its_own_projects_work_does_not_count_as_fitting_its_reservation() -> None:
    """vision-lab's first 8-GPU job fills its 8 reserved H100; the second waits for it (the unreserved H100 are
    held by work that cannot be preempted): its wait is the project's own doing, not a broken reservation."""
    others = [
        SimJob(Job(id=f"other{i}", project="crowd", gpus=8, gpu_models=("H100",), time_limit_s=10 * HOUR_S,
                   preemptible=False), 30_000.0)
        for i in range(3)
    ]  # fmt: skip
    first = Job(id="first", project="vision-lab", gpus=8, gpu_models=("H100",), time_limit_s=4 * HOUR_S, submit_s=60.0)
    second = Job(id="second", project="vision-lab", gpus=8, gpu_models=("H100",), time_limit_s=HOUR_S, submit_s=600.0)
    workload = Workload("own", [*others, SimJob(first, 3 * HOUR_S), SimJob(second, 600.0)])
    s = lab_run(workload, "multifactor")
    r = s["reservations"]["vision-lab"]
    assert (r["jobs_fitting"], r["never_started_fitting"], r["max_wait_fitting_s"]) == (1, 0, 0.0)
    assert s["max_wait_s"] >= 3 * HOUR_S - 600.0  # the second job waited for the first
