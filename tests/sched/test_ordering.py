"""Ordering policies: exact queue orders for fifo, sjf, qssf, las, multifactor and kfabric."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from builders import DAY_S, HOUR_S, a_job

from kfabric.model import Job, PriorityClass
from kfabric.sched.estimator import RuntimeEstimator
from kfabric.sched.fairshare import TenantInfo, factors, shares
from kfabric.sched.ordering import OrderContext, order
from kfabric.sched.queue import PendingQueue
from kfabric.sched.registry import ORDERINGS

NOW = 10 * DAY_S
HIGH, NORMAL, LOW = PriorityClass.HIGH, PriorityClass.NORMAL, PriorityClass.LOW


def ctx(**kw: Any) -> OrderContext:
    base = OrderContext(
        now_s=NOW,
        fairshare={},
        estimator=RuntimeEstimator(),
        attained_gpu_s={},
        weights_priority_class=10_000.0,
        weights_fairshare=5_000.0,
        weights_age=1_000.0,
        weights_size=500.0,
        max_age_s=7 * DAY_S,
        favor_small=True,
        total_milli=64_000.0,
        las_thresholds_gpu_s=(8 * HOUR_S, 64 * HOUR_S),
        starvation_age_s=0.0,
    )
    return replace(base, **kw)


def queue(*jobs: Job) -> PendingQueue:
    q = PendingQueue()
    for j in jobs:
        q.add(j)
    return q


def ordered(name: str, q: PendingQueue, context: OrderContext | None = None) -> list[str]:
    rows = order(q, ORDERINGS[name](q, context or ctx()))
    out = []
    for r in rows.tolist():
        job = q.rows()[r]
        assert job is not None
        out.append(job.id)
    return out


def j(job_id: str, **kw: Any) -> Job:
    b = a_job(job_id).submitted(kw.pop("submit", NOW))
    return replace(b.build(), **kw)


# ---- fifo ----------------------------------------------------------------------------------------------------
def test_fifo_orders_by_submit_time_then_arrival() -> None:
    q = queue(j("c", submit=30.0), j("a", submit=10.0), j("b1", submit=20.0), j("b2", submit=20.0))
    assert ordered("fifo", q) == ["a", "b1", "b2", "c"]


def test_fifo_ignores_priority_and_size() -> None:
    q = queue(j("big", submit=1.0, gpus=64), j("urgent", submit=2.0, priority=PriorityClass.URGENT))
    assert ordered("fifo", q) == ["big", "urgent"]


def test_removed_jobs_are_not_ordered() -> None:
    q = queue(j("a", submit=1.0), j("b", submit=2.0), j("c", submit=3.0))
    q.remove("b")
    assert ordered("fifo", q) == ["a", "c"]
    assert len(q) == 2 and "b" not in q


# ---- sjf -------------------------------------------------------------------------------------------------------
def test_sjf_uses_the_declared_estimate_then_the_time_limit() -> None:
    q = queue(
        j("limit-2h", time_limit_s=2 * HOUR_S),
        j("est-3h", time_limit_s=10 * HOUR_S, runtime_estimate_s=3 * HOUR_S),
        j("est-1h", time_limit_s=10 * HOUR_S, runtime_estimate_s=1 * HOUR_S),
        j("limit-30m", time_limit_s=0.5 * HOUR_S),
    )
    assert ordered("sjf", q) == ["limit-30m", "est-1h", "limit-2h", "est-3h"]


# ---- qssf and the estimator ----------------------------------------------------------------------------------
def _history(est: RuntimeEstimator, job: Job, *runs_s: float) -> None:
    for r in runs_s:
        est.observe(job, r)


def test_qssf_orders_by_predicted_gpu_seconds_from_history() -> None:
    est = RuntimeEstimator()
    _history(est, j("h1", project="p", user="u", name="train", gpus=4), 100.0, 300.0)  # mean 200 s x 4 GPUs
    _history(est, j("h2", project="q", user="u", name="eval", gpus=1), 1_000.0, 1_000.0)
    q = queue(
        j("train", project="p", user="u", name="train", gpus=4, time_limit_s=HOUR_S),  # 800
        j("eval", project="q", user="u", name="eval", gpus=1, time_limit_s=HOUR_S),  # 1000
        j("unknown", project="r", gpus=1, time_limit_s=600.0),  # no history: time limit, 600
    )
    assert ordered("qssf", q, ctx(estimator=est)) == ["unknown", "train", "eval"]


def test_qssf_never_reads_the_declared_run_time() -> None:
    # the simulator's oracle puts the true run time in runtime_estimate_s (for sjf); qssf must not see it
    q = queue(
        j("long-but-declared-short", time_limit_s=10 * HOUR_S, runtime_estimate_s=60.0, submit=1.0),
        j("short-limit", time_limit_s=HOUR_S, submit=2.0),
    )
    assert ordered("qssf", q) == ["short-limit", "long-but-declared-short"]


@pytest.mark.parametrize(
    ("observed", "job", "expected_s"),
    [
        ([], j("x", project="p", time_limit_s=500.0), 500.0),
        ([], j("x", project="p", time_limit_s=500.0, runtime_estimate_s=5.0), 500.0),
        ([("p", "u", "n", 1, 100.0)], j("x", project="p", user="u", name="n"), HOUR_S),  # one sample is not enough
        ([("p", "u", "n", 1, 100.0), ("p", "u", "n", 1, 300.0)], j("x", project="p", user="u", name="n"), 200.0),
        # same project and name, another user: the (project, name) key
        ([("p", "u", "n", 1, 100.0), ("p", "v", "n", 2, 500.0)], j("x", project="p", user="w", name="n"), 300.0),
        # same project and GPU count only
        ([("p", "u", "a", 8, 100.0), ("p", "v", "b", 8, 200.0)], j("x", project="p", name="c", gpus=8), 150.0),
        # only the project in common
        ([("p", "u", "a", 1, 100.0), ("p", "v", "b", 2, 700.0)], j("x", project="p", name="c", gpus=4), 400.0),
        # history longer than the time limit is capped by it
        ([("p", "u", "n", 1, 9_000.0), ("p", "u", "n", 1, 9_000.0)], j("x", project="p", user="u", name="n"), HOUR_S),
        # another project's history is never used
        ([("q", "u", "n", 1, 10.0), ("q", "u", "n", 1, 10.0)], j("x", project="p", user="u", name="n"), HOUR_S),
    ],
    ids=[
        "no-history",
        "declared-ignored",
        "one-sample",
        "exact-key",
        "project-name",
        "project-gpus",
        "project",
        "capped",
        "other-project",
    ],
)
def test_estimator_keys_and_fallback(
    observed: list[tuple[str, str, str, int, float]], job: Job, expected_s: float
) -> None:
    est = RuntimeEstimator()
    for project, user, name, gpus, run_s in observed:
        est.observe(j("h", project=project, user=user, name=name, gpus=gpus), run_s)
    assert est.estimate(job) == pytest.approx(expected_s)


def test_estimator_keeps_a_window_of_recent_runs() -> None:
    est = RuntimeEstimator(window=3, min_samples=2)
    job = j("x", project="p", time_limit_s=10_000.0)
    for r in (1_000.0, 1_000.0, 1_000.0, 10.0, 20.0, 30.0):
        est.observe(job, r)
    assert est.estimate(job) == pytest.approx(20.0)
    assert est.version == 6


def test_qssf_starvation_guard_puts_old_jobs_first_in_fifo_order() -> None:
    q = queue(
        j("young-short", submit=NOW - 10.0, time_limit_s=60.0),
        j("old-long", submit=NOW - 2 * DAY_S, time_limit_s=100 * HOUR_S),
        j("older-long", submit=NOW - 3 * DAY_S, time_limit_s=200 * HOUR_S),
    )
    assert ordered("qssf", q, ctx(starvation_age_s=DAY_S)) == ["older-long", "old-long", "young-short"]
    assert ordered("qssf", q, ctx(starvation_age_s=0.0)) == ["young-short", "old-long", "older-long"]


# ---- las -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attained", "expected"),
    [
        ({}, ["a", "b", "c", "d"]),  # nobody ran: FIFO
        ({"a": 8 * HOUR_S}, ["b", "c", "d", "a"]),  # exactly on the first threshold: the second queue
        ({"a": 8 * HOUR_S - 1}, ["a", "b", "c", "d"]),  # just below: still the first queue
        ({"a": 100 * HOUR_S, "b": 10 * HOUR_S}, ["c", "d", "b", "a"]),  # third queue, second queue
        ({"a": 9 * HOUR_S, "b": 60 * HOUR_S, "c": 8 * HOUR_S}, ["d", "a", "b", "c"]),  # FIFO inside a queue
    ],
    ids=["fresh", "on-threshold", "below-threshold", "three-queues", "fifo-inside"],
)
def test_las_queues_by_attained_service(attained: dict[str, float], expected: list[str]) -> None:
    q = queue(*(j(name, submit=float(i)) for i, name in enumerate("abcd")))
    assert ordered("las", q, ctx(attained_gpu_s=attained)) == expected


# ---- multifactor ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("jobs", "context", "expected"),
    [
        (
            [j("normal", priority=NORMAL, submit=0.0), j("high", priority=HIGH, submit=NOW)],
            {},
            ["high", "normal"],
        ),  # a class step (2,500) beats the whole age factor (1,000)
        (
            [j("normal-small", priority=NORMAL, gpus=1), j("high-big", priority=HIGH, gpus=64)],
            {},
            ["high-big", "normal-small"],
        ),  # ... and the whole size factor (500)
        (
            [j("low", priority=LOW, submit=0.0, gpus=1), j("normal", priority=NORMAL, gpus=64)],
            {},
            ["normal", "low"],
        ),  # ... and both together (1,500)
        (
            [j("normal", priority=NORMAL, project="fresh"), j("high", priority=HIGH, project="heavy")],
            {"fairshare": {"fresh": 1.0, "heavy": 0.0}, "weights_priority_class": 100_000.0},
            ["high", "normal"],
        ),  # with a class weight above the other weights' sum, the class beats fair share too
        (
            [j("heavy", project="heavy"), j("fresh", project="fresh")],
            {"fairshare": {"fresh": 1.0, "heavy": 0.25}},
            ["fresh", "heavy"],
        ),
        (
            [j("young", submit=NOW - HOUR_S), j("old", submit=NOW - DAY_S)],
            {},
            ["old", "young"],
        ),
        (
            [j("ancient", submit=NOW - 9 * DAY_S), j("old", submit=NOW - 8 * DAY_S)],
            {},
            ["ancient", "old"],
        ),  # both capped at max age: equal keys, arrival order
        (
            [j("big", gpus=32), j("small", gpus=1)],
            {},
            ["small", "big"],
        ),
        (
            [j("small", gpus=1), j("big", gpus=32)],
            {"favor_small": False},
            ["big", "small"],
        ),
        (
            [j("unknown-project", project="nobody"), j("used", project="used")],
            {"fairshare": {"used": 0.9}},
            ["unknown-project", "used"],
        ),  # a project missing from the fair-share tree counts as unused (factor 1.0)
    ],
    ids=[
        "class-beats-age",
        "class-beats-size",
        "class-beats-age-and-size",
        "class-weight-beats-fairshare",
        "fairshare",
        "age",
        "age-capped",
        "size-favor-small",
        "size-favor-large",
        "unknown-project",
    ],
)
def test_multifactor(jobs: list[Job], context: dict[str, Any], expected: list[str]) -> None:
    assert ordered("multifactor", queue(*jobs), ctx(**context)) == expected


def test_multifactor_keys_are_the_weighted_sum() -> None:
    q = queue(j("x", priority=HIGH, project="p", submit=NOW - 3.5 * DAY_S, gpus=16))
    keys = ORDERINGS["multifactor"](q, ctx(fairshare={"p": 0.5}))
    # class 3/4 * 10,000 + fair share 0.5 * 5,000 + age 0.5 * 1,000 + size (1 - 16/64) * 500
    assert keys.tolist() == pytest.approx([-(7_500.0 + 2_500.0 + 500.0 + 375.0)])


def test_fair_share_factors_follow_the_tree() -> None:
    tenants = {
        "a1": TenantInfo("a1", "org-a", "prog", weight=1.0),
        "a2": TenantInfo("a2", "org-a", "prog", weight=3.0),
        "b1": TenantInfo("b1", "org-b", "prog", weight=4.0),
    }
    assert shares(tenants) == pytest.approx({"a1": 0.125, "a2": 0.375, "b1": 0.5})
    f = factors(tenants, {"a1": 0.0, "a2": 375.0, "b1": 625.0})
    # usage share / fair share: a1 0 -> 1.0; a2 0.375/0.375 -> 0.5; b1 0.625/0.5 -> 2**-1.25
    assert f == pytest.approx({"a1": 1.0, "a2": 0.5, "b1": 2**-1.25})


# ---- kfabric -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("jobs", "context", "expected"),
    [
        (
            [j("normal-short", priority=NORMAL, time_limit_s=60.0), j("high-long", priority=HIGH, gpus=64)],
            {},
            ["high-long", "normal-short"],
        ),  # class first, whatever the size
        (
            [j("long", time_limit_s=4 * HOUR_S), j("short", time_limit_s=HOUR_S), j("wide", gpus=8)],
            {},
            ["short", "long", "wide"],
        ),  # then predicted GPU-seconds: 1 h x 1, 4 h x 1, 1 h x 8
        (
            [j("heavy", project="heavy", time_limit_s=HOUR_S), j("fresh", project="fresh", time_limit_s=2 * HOUR_S)],
            {"fairshare": {"heavy": 0.0, "fresh": 1.0}},
            ["fresh", "heavy"],
        ),  # 2 h / 1.5 beats 1 h / 0.5: fair share scales the predicted service
        (
            [j("short", time_limit_s=60.0, submit=NOW), j("starving", time_limit_s=100 * HOUR_S, submit=0.0)],
            {"starvation_age_s": DAY_S},
            ["starving", "short"],
        ),
        (
            [j("declared", time_limit_s=10 * HOUR_S, runtime_estimate_s=1.0), j("limit", time_limit_s=HOUR_S)],
            {},
            ["limit", "declared"],
        ),  # like qssf it never reads the declared (oracle) run time
    ],
    ids=["class-first", "predicted-service", "fairshare-scales", "starvation-guard", "no-oracle"],
)
def test_kfabric_order(jobs: list[Job], context: dict[str, Any], expected: list[str]) -> None:
    assert ordered("kfabric", queue(*jobs), ctx(**context)) == expected


def test_kfabric_uses_history() -> None:
    est = RuntimeEstimator()
    _history(est, j("h", project="p", name="quick", gpus=8), 60.0, 60.0)
    q = queue(j("one-gpu-hour", project="q", time_limit_s=HOUR_S), j("quick", project="p", name="quick", gpus=8))
    assert ordered("kfabric", q, ctx(estimator=est)) == ["quick", "one-gpu-hour"]


@pytest.mark.parametrize("name", sorted(ORDERINGS))
def test_every_ordering_gives_one_key_per_row_and_breaks_ties_by_arrival(name: str) -> None:
    q = queue(*(j(f"j{i}", submit=5.0) for i in range(5)))
    keys = ORDERINGS[name](q, ctx())
    assert keys.shape == (5,) and keys.dtype == np.float64
    assert ordered(name, q) == [f"j{i}" for i in range(5)]
