"""The synthetic national workload: determinism, size classes, tenants, arrival pattern and offered load."""

from __future__ import annotations

from collections import Counter
from datetime import date

import numpy as np
import pytest

from kfabric.model import Classification, MinTopology, OwnerKind, PriorityClass
from kfabric.scenarios.loader import Scenario, load_scenario
from kfabric.traces.national import NationalArrays, national_arrays, synthetic_national

DAY = 86400.0


@pytest.fixture(scope="module")
def korea() -> Scenario:
    return load_scenario("korea-2030")


@pytest.fixture(scope="module")
def one_day(korea: Scenario) -> NationalArrays:
    """A full-scale day (~170k jobs): arrays only, Job objects are not built."""
    return national_arrays(korea, 1.0, seed=11, scale=1.0)


@pytest.fixture(scope="module")
def two_weeks(korea: Scenario) -> NationalArrays:
    return national_arrays(korea, 14.0, seed=5, scale=0.02)


def _field(a: NationalArrays, name: str) -> np.ndarray:
    return np.array([a.templates[t][name] for t in a.template.tolist()], dtype=object)


def test_same_seed_same_workload_other_seed_differs() -> None:
    lab = load_scenario("lab")
    first = synthetic_national(lab, 3.0, seed=4)
    again = synthetic_national(lab, 3.0, seed=4)
    other = synthetic_national(lab, 3.0, seed=5)
    assert [(j.job, j.run_s) for j in first.jobs] == [(j.job, j.run_s) for j in again.jobs]
    assert first.tenants == again.tenants and first.description == again.description
    assert [(j.job, j.run_s) for j in first.jobs] != [(j.job, j.run_s) for j in other.jobs]


def test_jobs_are_valid_sorted_and_named_for_history() -> None:
    w = synthetic_national(load_scenario("lab"), 7.0, seed=2)
    jobs = w.jobs
    assert len(jobs) > 200
    assert [j.job.submit_s for j in jobs] == sorted(j.job.submit_s for j in jobs)
    assert all(0 <= j.job.submit_s <= 7 * DAY for j in jobs)
    assert len({j.job.id for j in jobs}) == len(jobs)
    assert all(j.job.time_limit_s >= j.run_s > 0 and j.job.user and j.job.name for j in jobs)
    assert {j.job.project for j in jobs} <= set(w.tenants)
    # names repeat per project: a few templates each, rerun many times
    per_name = Counter((j.job.project, j.job.name) for j in jobs)
    assert len(per_name) < len(jobs) / 3
    assert all(j.job.gpus <= 32 for j in jobs)  # capped at the lab's largest cluster


@pytest.mark.parametrize(
    ("cls", "check"),
    [
        ("fm", lambda kw: kw["gpus"] >= 512 and kw["gpus"] % 8 == 0 and kw["priority"] is PriorityClass.HIGH),
        ("grant", lambda kw: 8 <= kw["gpus"] <= 256),
        ("small", lambda kw: 1 <= kw["gpus"] <= 8 and kw["gpu_milli"] == 1000),
        ("fractional", lambda kw: kw["gpus"] == 1 and kw["gpu_milli"] in (250, 500)),
        ("owner", lambda kw: kw["classification"] is Classification.INTERNAL and kw["gpu_models"]),
    ],
    ids=["fm", "grant", "small", "fractional", "owner"],
)
def test_size_classes_present(one_day: NationalArrays, cls: str, check: object) -> None:
    used = [t for t in set(one_day.template.tolist()) if one_day.template_class[t] == cls]
    assert used, f"no {cls} job in a full-scale day"
    assert all(check(one_day.templates[t]) for t in used)  # type: ignore[operator]


def test_counts_mix_and_tenants(korea: Scenario, one_day: NationalArrays) -> None:
    a = one_day
    classes = Counter(a.template_class[t] for t in a.template.tolist())
    assert 100_000 < len(a.template) < 300_000
    assert classes["small"] + classes["fractional"] > 0.8 * len(a.template)  # most jobs are small
    gpus = _field(a, "gpus").astype(int)
    assert np.mean(gpus == 1) > 0.5  # most jobs ask for one (or a fraction of one) GPU
    work = a.run_s * gpus
    big = np.isin(np.array(a.template_class)[a.template], ["fm", "grant", "owner"])
    assert work[big].sum() > work[~big].sum()  # large jobs dominate GPU time
    tenants = a.tenants
    private = {o.name for o in korea.fleet.owners if o.kind is OwnerKind.PRIVATE}
    fm = {t.project for t in tenants.values() if t.program == "sovereign-fm"}
    assert fm == {g.project for g in korea.grants if g.program == "sovereign-fm"}
    owners = [t for t in tenants.values() if t.affiliation]
    assert {t.affiliation for t in owners} == private
    assert tenants["samsung-fab-ai"].affiliation == "samsung"
    assert tenants["kaist-llm-reasoning"].organization == "kaist"
    assert sum(1 for t in tenants.values() if not t.affiliation and t.program != "sovereign-fm") >= 200
    assert len(set(a.user.tolist())) >= 2_000
    # fm jobs are bound to their grants' B200; korea's B200 sites are cleared up to confidential
    fm_rows = [kw for kw in a.templates if kw["project"] in fm]
    assert {kw["gpu_models"] for kw in fm_rows} == {("B200",)}
    assert all(kw["classification"] <= Classification.CONFIDENTIAL for kw in fm_rows)
    assert {kw["min_topology"] for kw in fm_rows} == {MinTopology.CLUSTER}  # 512+ GPUs exceed a 256-GPU unit
    # owner jobs stay on their owner's models
    for kw in a.templates:
        info = tenants.get(str(kw["project"]))
        if info is not None and info.affiliation:
            owned = {p.gpu_model for p in korea.fleet.pools if p.owner == info.affiliation}
            assert set(kw["gpu_models"]) <= owned  # type: ignore[call-overload]


def test_weekdays_busier_than_weekends_and_afternoons_than_nights(two_weeks: NationalArrays) -> None:
    submit = two_weeks.submit_s
    day = (submit // DAY).astype(int) % 7
    per_weekday = np.count_nonzero(day < 5) / 10
    per_weekend_day = np.count_nonzero(day >= 5) / 4
    assert 0.5 < per_weekend_day / per_weekday < 0.75  # ~40% fewer
    hour = ((submit % DAY) // 3600).astype(int)
    assert np.count_nonzero((hour >= 14) & (hour < 16)) > 2 * np.count_nonzero((hour >= 2) & (hour < 4))


def test_offered_load_follows_the_target(two_weeks: NationalArrays) -> None:
    a = two_weeks
    assert a.capacity_gpus == 268_616
    assert a.target_gpus / a.capacity_gpus == pytest.approx(0.85 * 0.02)
    horizon = 14 * DAY
    gpus = _field(a, "gpus").astype(float) * _field(a, "gpu_milli").astype(float) / 1000
    realized = float(np.sum(np.minimum(a.run_s, horizon - a.submit_s) * gpus)) / (a.capacity_gpus * horizon)
    assert 0.7 * 0.017 < realized < 1.15 * 0.017


def test_scale_multiplies_arrivals(korea: Scenario) -> None:
    low = national_arrays(korea, 2.0, seed=3, scale=0.01)
    high = national_arrays(korea, 2.0, seed=3, scale=0.03)
    assert 2.5 < len(high.template) / len(low.template) < 3.5


def test_online_date_limits_the_fleet(korea: Scenario) -> None:
    a = national_arrays(korea, 1.0, seed=1, scale=0.05, on=date(2026, 1, 1))
    assert a.capacity_gpus == 9_320
    assert not any(t.affiliation for t in a.tenants.values())  # no private pool is online yet
    with pytest.raises(ValueError, match="no pool"):
        national_arrays(korea, 1.0, seed=1, on=date(2020, 1, 1))


@pytest.mark.parametrize(("days", "scale"), [(0.0, 1.0), (-1.0, 1.0), (1.0, -0.5)], ids=["zero", "negative", "scale"])
def test_bad_arguments(korea: Scenario, days: float, scale: float) -> None:
    with pytest.raises(ValueError, match="fix:"):
        national_arrays(korea, days, seed=1, scale=scale)
