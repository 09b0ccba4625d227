"""Policy config: ``Policy.from_mapping`` reads a YAML-shaped mapping and names the exact key it rejects."""

from __future__ import annotations

from typing import Any

import pytest

from kfabric.model import ValidationError
from kfabric.sched.policy import BACKFILL_MODES, MultifactorWeights, Policy
from kfabric.sched.registry import ORDERINGS, PLACEMENTS


def test_defaults() -> None:
    p = Policy.from_mapping({})
    assert p == Policy()
    assert (p.ordering, p.placement, p.backfill) == ("multifactor", "kfabric", "easy")


def test_every_registered_name_is_accepted() -> None:
    for ordering in ORDERINGS:
        for placement in PLACEMENTS:
            for backfill in BACKFILL_MODES:
                p = Policy.from_mapping({"ordering": ordering, "placement": placement, "backfill": backfill})
                assert (p.ordering, p.placement, p.backfill) == (ordering, placement, backfill)


def test_a_full_mapping() -> None:
    p = Policy.from_mapping(
        {
            "name": "strict",
            "ordering": "qssf",
            "placement": "best-fit",
            "backfill": "conservative",
            "weights": {"priority_class": 50_000, "age": 10.5, "favor_small": False},
            "fairshare_half_life_s": 3600,
            "las_thresholds_gpu_s": [10, 20.5],
            "starvation_age_s": 86_400,
            "preempt_by_priority": False,
            "reclaim": True,
            "grace_s": 0,
            "min_run_s": 1200,
            "borrow_limit_pct": 50,
            "reservations": 3,
            "bf_max_job_test": 100,
            "max_preemption_attempts": 4,
        }
    )
    assert p == Policy(
        name="strict",
        ordering="qssf",
        placement="best-fit",
        backfill="conservative",
        weights=MultifactorWeights(priority_class=50_000.0, age=10.5, favor_small=False),
        fairshare_half_life_s=3600.0,
        las_thresholds_gpu_s=(10.0, 20.5),
        starvation_age_s=86_400.0,
        preempt_by_priority=False,
        reclaim=True,
        grace_s=0.0,
        min_run_s=1200.0,
        borrow_limit_pct=50.0,
        reservations=3,
        bf_max_job_test=100,
        max_preemption_attempts=4,
    )
    assert isinstance(p.grace_s, float) and isinstance(p.weights.priority_class, float)


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-key", {"orderin": "fifo"}, "policy.orderin", "unknown key"),
    ("unknown-ordering", {"ordering": "lifo"}, "policy.ordering", "unknown ordering 'lifo'"),
    ("unknown-placement", {"placement": "worst-fit"}, "policy.placement", "unknown placement 'worst-fit'"),
    ("unknown-backfill", {"backfill": "aggressive"}, "policy.backfill", "unknown backfill 'aggressive'"),
    ("ordering-not-text", {"ordering": 3}, "policy.ordering", "must be text, got 3"),
    ("name-empty", {"name": ""}, "policy.name", "must not be empty"),
    ("float-as-text", {"grace_s": "60"}, "policy.grace_s", "must be a number, got '60'"),
    ("float-as-bool", {"min_run_s": True}, "policy.min_run_s", "must be a number, got True"),
    ("int-as-float", {"reservations": 1.5}, "policy.reservations", "must be a whole number, got 1.5"),
    ("int-as-bool", {"bf_max_job_test": True}, "policy.bf_max_job_test", "must be a whole number, got True"),
    ("bool-as-text", {"reclaim": "yes"}, "policy.reclaim", "must be true or false, got 'yes'"),
    ("bool-as-int", {"preempt_by_priority": 1}, "policy.preempt_by_priority", "must be true or false, got 1"),
    ("negative-grace", {"grace_s": -1}, "policy.grace_s", "must be >= 0 seconds"),
    ("negative-min-run", {"min_run_s": -0.5}, "policy.min_run_s", "must be >= 0 seconds"),
    ("zero-half-life", {"fairshare_half_life_s": 0}, "policy.fairshare_half_life_s", "must be > 0 seconds"),
    ("negative-borrow", {"borrow_limit_pct": -5}, "policy.borrow_limit_pct", "must be within 0..100"),
    ("borrow-over-100", {"borrow_limit_pct": 101}, "policy.borrow_limit_pct", "must be within 0..100"),
    ("negative-reservations", {"reservations": -1}, "policy.reservations", "must be >= 0"),
    ("zero-job-test", {"bf_max_job_test": 0}, "policy.bf_max_job_test", "must be >= 1"),
    ("negative-preemption-attempts", {"max_preemption_attempts": -1}, "policy.max_preemption_attempts", "must be >= 0"),
    ("thresholds-not-list", {"las_thresholds_gpu_s": 5}, "policy.las_thresholds_gpu_s", "must be a list of numbers"),
    (
        "thresholds-text",
        {"las_thresholds_gpu_s": [1, "2"]},
        "policy.las_thresholds_gpu_s",
        "must be a list of numbers",
    ),
    ("thresholds-decreasing", {"las_thresholds_gpu_s": [10, 5]}, "policy.las_thresholds_gpu_s", "must be increasing"),
    ("weights-not-mapping", {"weights": [1, 2]}, "policy.weights", "must be a mapping of factor -> weight"),
    ("weights-unknown", {"weights": {"agee": 1}}, "policy.weights.agee", "unknown weight"),
    ("weights-text", {"weights": {"age": "high"}}, "policy.weights.age", "must be a number, got 'high'"),
    (
        "weights-favor-int",
        {"weights": {"favor_small": 0}},
        "policy.weights.favor_small",
        "must be true or false, got 0",
    ),
    ("weights-negative", {"weights": {"fairshare": -1}}, "policy.weights.fairshare", "must be >= 0, got -1.0"),
    ("weights-max-age-zero", {"weights": {"max_age_s": 0}}, "policy.weights.max_age_s", "must be > 0 seconds"),
]


@pytest.mark.parametrize(("data", "where", "problem"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_from_mapping_rejects(data: dict[str, Any], where: str, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping(data)
    assert (info.value.where, info.value.problem) == (where, problem)


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping({"placement": "x"})
    assert info.value.fix == "use one of: best-fit, fgd, first-fit, kfabric"
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping({"ordering": "x"})
    assert info.value.fix == "use one of: fifo, kfabric, las, multifactor, qssf, sjf"
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping({"backfill": "x"})
    assert info.value.fix == "use one of: none, easy, conservative"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"orderin": "fifo"}, "scenario.policy.orderin"),
        ({"ordering": "lifo"}, "scenario.policy.ordering"),
        ({"grace_s": -1.0}, "scenario.policy.grace_s"),
        ({"weights": {"age": "x"}}, "scenario.policy.weights.age"),
        ({"weights": {"age": -1}}, "scenario.policy.weights.age"),
    ],
    ids=["unknown-key", "constructor-check", "negative", "weights-type", "weights-negative"],
)
def test_where_prefix_is_the_callers(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping(data, where="scenario.policy")
    assert info.value.where == where


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValidationError) as info:
        Policy(weights=MultifactorWeights(size=-1.0))
    assert info.value.where == "policy.weights.size"
    with pytest.raises(ValidationError) as info:
        Policy(ordering="nope")
    assert info.value.where == "policy.ordering"


def test_with_returns_a_changed_copy() -> None:
    p = Policy()
    q = p.with_(backfill="none", grace_s=5.0)
    assert (q.backfill, q.grace_s, p.backfill, p.grace_s) == ("none", 5.0, "easy", 60.0)
    with pytest.raises(ValidationError):
        p.with_(backfill="sometimes")
