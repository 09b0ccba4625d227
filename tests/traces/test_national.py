"""The synthetic national workload: determinism, size classes, tenants, arrival pattern, offered load in each
segment's own GPU time and time limits that hold on every GPU model a job may use."""

from __future__ import annotations

from collections import Counter
from datetime import date

import numpy as np
import pytest

from kfabric.model import Classification, MinTopology, NodePool, OwnerKind, PriorityClass, Sharing
from kfabric.model.gpu import REFERENCE_MODEL
from kfabric.model.job import Job
from kfabric.scenarios.loader import Scenario, load_scenario
from kfabric.sched.capacity import Capacity
from kfabric.sched.eligibility import eligible_pools
from kfabric.sim.speed import RunTimeScale
from kfabric.traces.national import NationalArrays, national_arrays, synthetic_national
from kfabric.traces.philly import STANDARD_LIMITS_S

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
    busy = a.run_s * a.segment_factor[a.template]  # seconds of the GPUs of the models that run it
    realized = float(np.sum(np.minimum(busy, horizon - a.submit_s) * gpus)) / (a.capacity_gpus * horizon)
    assert 0.7 * 0.017 < realized < 1.15 * 0.017


# ---- GPU speeds: offered load in the pools' own time, time limits for the slowest model --------------------------

MAIN_DAY = date(2026, 6, 15)  # the main job's start: public, SK (RTX PRO 6000), Samsung and NAVER pools online


def _segment(scenario: Scenario, pool: NodePool) -> str:
    private = {o.name for o in scenario.fleet.owners if o.kind is OwnerKind.PRIVATE}
    return pool.owner if pool.owner in private and pool.sharing is not Sharing.SHARED else "public"


@pytest.fixture(scope="module")
def main_fortnight(korea: Scenario) -> NationalArrays:
    """The main job's workload at full scale (~700k jobs, arrays only)."""
    return national_arrays(korea, 14.0, seed=0, scale=1.0, on=MAIN_DAY)


@pytest.mark.parametrize(
    ("segment", "speed"),
    [
        ("public", 32_983 / 21_536),  # B200 7,680 + 2,424 (2.0), H200 3,056 (1.2), GH200 8,400 (1.09)
        ("samsung", 2.2),  # GB200
        ("naver", 2.0),  # B200
        ("sk", 0.52),  # RTX PRO 6000
    ],
)
def test_offered_load_in_each_segment_is_the_target_in_its_own_gpu_time(
    korea: Scenario, main_fortnight: NationalArrays, segment: str, speed: float
) -> None:
    """Each segment (public pools, each private owner's own pools) is offered ``load`` of what its GPUs can do:
    a job's H100 run time counts at the speed of the pools of the segment it may use, weighted by their GPUs."""
    a, horizon = main_fortnight, 14 * DAY
    pools = [p for p in korea.fleet.pools_online(MAIN_DAY) if _segment(korea, p) == segment]
    speed_of = {m.name: m.relative_speed for m in korea.fleet.gpu_models}
    assert a.segment_gpus[segment] == sum(p.gpus for p in pools)
    busy_per_template = np.zeros(len(a.templates))  # segment GPU-seconds per H100 GPU-second of each template
    for t, kw in enumerate(a.templates):
        if (a.tenants[str(kw["project"])].affiliation or "public") != segment:
            continue
        usable = [p for p in pools if not kw["gpu_models"] or p.gpu_model in kw["gpu_models"]]  # type: ignore[operator]
        busy_per_template[t] = sum(p.gpus for p in usable) / sum(p.gpus * speed_of[p.gpu_model] for p in usable)
    mine = busy_per_template[a.template] > 0
    assert np.count_nonzero(mine) > 500
    gpus = _field(a, "gpus").astype(float) * _field(a, "gpu_milli").astype(float) / 1000
    h100 = float(np.sum(a.run_s[mine] * gpus[mine])) / (a.segment_gpus[segment] * horizon)
    offered = float(np.sum(a.run_s[mine] * busy_per_template[a.template[mine]] * gpus[mine]))
    offered /= a.segment_gpus[segment] * horizon
    assert offered == pytest.approx(0.85, rel=0.15)  # arrivals are random and run times heavy-tailed
    # in H100 time the same work is the target times the segment's speed (GPU-weighted over the pools its jobs
    # may use): sized as if every GPU were an H100, SK's RTX PRO 6000 would be offered ~163% of what they can do
    assert h100 / offered == pytest.approx(speed, rel=0.15)


@pytest.mark.parametrize(
    ("scenario_name", "days", "scale", "on", "bound_to_faster"),
    [
        ("korea-2030", 1.0, 0.05, None, True),
        ("korea-2030", 3.0, 0.1, MAIN_DAY, True),
        ("lab", 7.0, 1.0, None, False),  # H100 and RTX PRO 6000 only
    ],
    ids=["korea-all-pools", "korea-main-day", "lab"],
)
def test_time_limits_cover_the_run_on_every_model_the_job_may_use(
    scenario_name: str, days: float, scale: float, on: date | None, bound_to_faster: bool
) -> None:
    """No job is made to overrun: its true run time on every pool the scheduler could ever give it (every pool
    online) is within its time limit, and the limit is the usual padding (at most 5x, rounded up to a standard
    limit) of the run time on the slowest of them."""
    scenario = load_scenario(scenario_name)
    a = national_arrays(scenario, days, seed=9, scale=scale, on=on)
    cap = Capacity(scenario.fleet)
    for i in range(len(cap.pools)):
        cap.set_pool_online(i, True)
    scale_of = RunTimeScale(scenario.fleet.gpu_models, REFERENCE_MODEL)
    slowest = np.zeros(len(a.templates))
    fastest = np.zeros(len(a.templates))
    runnable = np.zeros(len(a.templates), dtype=bool)
    for t, kw in enumerate(a.templates):
        job = Job(id=f"t{t}", time_limit_s=1.0, **kw)  # type: ignore[arg-type]
        eligible = eligible_pools(cap, job, a.tenants[job.project].affiliation)
        # a template no pool can take never runs (a 4,096-GPU fm size on B200 is capped at the largest B200
        # cluster, 7,656 GPUs, but a job needs one pool: at most 3,840): nothing to overrun
        runnable[t] = eligible.reason is None
        factors = [scale_of.factor(job, cap.pools[i].model) for i in eligible.pools] or [0.0]
        slowest[t], fastest[t] = max(factors), min(factors)
    assert np.count_nonzero(~runnable[a.template]) < 0.001 * len(a.template)
    worst = a.run_s * slowest[a.template]
    overrun = np.count_nonzero(worst > a.time_limit_s)
    assert overrun == 0, f"{overrun} of {len(worst)} jobs run past their time limit on a model they may use"
    standard = np.asarray(STANDARD_LIMITS_S)
    padded = standard[np.minimum(np.searchsorted(standard, 5 * worst), len(standard) - 1)]
    padded = np.where(worst > STANDARD_LIMITS_S[-1], np.ceil(worst / DAY) * DAY, padded)
    assert np.all(a.time_limit_s <= padded)
    np.testing.assert_array_equal(a.slowest_factor[runnable], slowest[runnable])
    # jobs that may land on a slower model than H100 (RTX PRO 6000: 1/0.52), and in korea jobs bound to faster
    # ones (fm teams on B200), whose limits are set for their own models
    assert np.any(slowest[a.template] > 1.5)
    assert np.any(slowest[a.template] < 1.0) == bound_to_faster
    assert np.any(fastest[a.template] < slowest[a.template])


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
