"""Domain objects refuse bad values with an exact ``where`` and message; jobs move only along allowed edges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from itertools import product
from typing import Any

import pytest

from kfabric.model import (
    Application,
    Classification,
    Cluster,
    GpuModel,
    Grant,
    Job,
    JobState,
    NodePool,
    Organization,
    OrgKind,
    Program,
    ProgramRules,
    Project,
    Review,
    Sharing,
    Site,
    TransitionError,
    ValidationError,
    check_transition,
)

# --- builders: a valid object of each type, with any field overridden


def gpu(**kw: Any) -> GpuModel:
    base: dict[str, Any] = {
        "name": "X1",
        "memory_gb": 80,
        "board_power_w": 700,
        "nvlink_domain_gpus": 8,
        "su_weight": 1,
    }
    return GpuModel(**base | kw)


def site(**kw: Any) -> Site:
    base: dict[str, Any] = {
        "name": "s1",
        "region": "daejeon",
        "operator": "lab",
        "certification": "government-operated",
        "clearance": Classification.RESTRICTED,
        "power_cap_mw": 1.0,
        "pue": 1.3,
    }
    return Site(**base | kw)


def cluster(**kw: Any) -> Cluster:
    base: dict[str, Any] = {"name": "c1", "site": "s1", "backend": "sim"}
    return Cluster(**base | kw)


def pool(**kw: Any) -> NodePool:
    base: dict[str, Any] = {
        "name": "p1",
        "cluster": "c1",
        "gpu_model": "H100",
        "gpus_per_node": 8,
        "nodes": 4,
        "nvlink_domain_gpus": 8,
        "nodes_per_rack": 2,
        "racks_per_unit": 2,
        "node_power_kw": 10.2,
        "owner": "gov",
        "sharing": Sharing.SHARED,
        "online": date(2025, 1, 1),
    }
    return NodePool(**base | kw)


def grant(**kw: Any) -> Grant:
    base: dict[str, Any] = {
        "id": "g1",
        "program": "ngg",
        "project": "llm",
        "start": date(2025, 1, 1),
        "end": date(2026, 1, 1),
        "reserved_model": "B200",
        "reserved_gpus": 8,
    }
    return Grant(**base | kw)


def job(**kw: Any) -> Job:
    base: dict[str, Any] = {"id": "j1", "project": "llm", "time_limit_s": 3600.0}
    return Job(**base | kw)


def rules(**kw: Any) -> ProgramRules:
    return ProgramRules(**kw)


def review(**kw: Any) -> Review:
    base: dict[str, Any] = {"application": "a1", "reviewer": "r1", "scores": (("impact", 7.0),)}
    return Review(**base | kw)


def application(**kw: Any) -> Application:
    base: dict[str, Any] = {
        "id": "a1",
        "program": "ngg",
        "organization": "kaist",
        "project": "llm",
        "gpu_model_class": "B200",
        "gpus": 8,
        "months": 6,
    }
    return Application(**base | kw)


@dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[], object]
    where: str
    problem: str


NAME_PROBLEM = "name must be a non-empty string without leading/trailing spaces, got "

BAD = [
    # GpuModel
    Bad("gpu-empty-name", lambda: gpu(name=""), "gpu model ''.name", NAME_PROBLEM + "''"),
    Bad("gpu-slash-name", lambda: gpu(name="a/b"), "gpu model 'a/b'.name", "name 'a/b' contains '/'"),
    Bad("gpu-zero-memory", lambda: gpu(memory_gb=0), "gpu model 'X1'.memory_gb", "must be > 0, got 0"),
    Bad("gpu-negative-power", lambda: gpu(board_power_w=-1), "gpu model 'X1'.board_power_w", "must be > 0, got -1"),
    Bad("gpu-zero-nvlink", lambda: gpu(nvlink_domain_gpus=0), "gpu model 'X1'.nvlink_domain_gpus",
        "must be >= 1 (1 = PCIe only), got 0"),
    Bad("gpu-zero-su-weight", lambda: gpu(su_weight=0.0), "gpu model 'X1'.su_weight", "must be > 0, got 0.0"),
    # Site
    Bad("site-padded-name", lambda: site(name=" s1"), "site ' s1'.name", NAME_PROBLEM + "' s1'"),
    Bad("site-zero-cap", lambda: site(power_cap_mw=0.0), "site 's1'.power_cap_mw", "must be > 0 MW, got 0.0"),
    Bad("site-pue-below-1", lambda: site(pue=0.95), "site 's1'.pue", "must be between 1.0 and 3.0, got 0.95"),
    Bad("site-pue-above-3", lambda: site(pue=3.5), "site 's1'.pue", "must be between 1.0 and 3.0, got 3.5"),
    # Cluster
    Bad("cluster-bad-backend", lambda: cluster(backend="cloud"), "cluster 'c1'.backend", "unknown backend 'cloud'"),
    Bad("cluster-slash-name", lambda: cluster(name="c/1"), "cluster 'c/1'.name", "name 'c/1' contains '/'"),
    # NodePool
    Bad("pool-zero-nodes", lambda: pool(nodes=0), "pool 'p1'.nodes", "must be >= 1, got 0"),
    Bad("pool-negative-gpus", lambda: pool(gpus_per_node=-1), "pool 'p1'.gpus_per_node", "must be >= 0, got -1"),
    Bad("pool-zero-rack", lambda: pool(nodes_per_rack=0), "pool 'p1'.nodes_per_rack", "must be >= 1, got 0"),
    Bad("pool-zero-unit", lambda: pool(racks_per_unit=0), "pool 'p1'.racks_per_unit", "must be >= 1, got 0"),
    Bad("pool-zero-power", lambda: pool(node_power_kw=0.0), "pool 'p1'.node_power_kw", "must be > 0 kW, got 0.0"),
    Bad("pool-zero-cpu", lambda: pool(cpu_milli_per_node=0), "pool 'p1'.cpu_milli_per_node", "must be > 0"),
    Bad("pool-zero-memory", lambda: pool(memory_mib_per_node=0), "pool 'p1'.memory_mib_per_node", "must be > 0"),
    Bad("pool-zero-nvlink", lambda: pool(nvlink_domain_gpus=0), "pool 'p1'.nvlink_domain_gpus",
        "must be >= 1 (1 = PCIe), got 0"),
    Bad("pool-nvlink-splits-node-unevenly", lambda: pool(nvlink_domain_gpus=3), "pool 'p1'.nvlink_domain_gpus",
        "3 does not divide gpus_per_node 8"),
    Bad("pool-nvlink-not-whole-nodes", lambda: pool(nvlink_domain_gpus=12), "pool 'p1'.nvlink_domain_gpus",
        "a 12-GPU domain is not a whole number of 8-GPU nodes that tiles a 2-node rack"),
    Bad("pool-nvl72-in-16-tray-rack", lambda: pool(gpus_per_node=4, nvlink_domain_gpus=72, nodes_per_rack=16),
        "pool 'p1'.nvlink_domain_gpus",
        "a 72-GPU domain is not a whole number of 4-GPU nodes that tiles a 16-node rack"),
    # Grant
    Bad("grant-end-equals-start", lambda: grant(end=date(2025, 1, 1)), "grant 'g1'.end",
        "end 2025-01-01 must be after start 2025-01-01"),
    Bad("grant-negative-gpus", lambda: grant(reserved_gpus=-1), "grant 'g1'.reserved_gpus", "must be >= 0"),
    Bad("grant-model-without-gpus", lambda: grant(reserved_gpus=0, credit_su_hours=10.0), "grant 'g1'.reserved_model",
        "reserved_model and reserved_gpus go together"),
    Bad("grant-gpus-without-model", lambda: grant(reserved_model=None), "grant 'g1'.reserved_model",
        "reserved_model and reserved_gpus go together"),
    Bad("grant-negative-credit", lambda: grant(credit_su_hours=-1.0), "grant 'g1'.credit_su_hours", "must be >= 0"),
    Bad("grant-grants-nothing", lambda: grant(reserved_model=None, reserved_gpus=0), "grant 'g1'", "grants nothing"),
    Bad("grant-zero-weight", lambda: grant(weight=0.0), "grant 'g1'.weight", "must be > 0, got 0.0"),
    # Job
    Bad("job-empty-id", lambda: job(id=""), "job.id", "must not be empty"),
    Bad("job-empty-project", lambda: job(project=""), "job 'j1'.project", "must not be empty"),
    Bad("job-zero-time-limit", lambda: job(time_limit_s=0.0), "job 'j1'.time_limit_s", "must be > 0, got 0.0"),
    Bad("job-negative-gpus", lambda: job(gpus=-1), "job 'j1'.gpus", "must be >= 0, got -1"),
    Bad("job-zero-milli", lambda: job(gpu_milli=0), "job 'j1'.gpu_milli", "must be in 1..1000, got 0"),
    Bad("job-milli-above-1000", lambda: job(gpu_milli=1500), "job 'j1'.gpu_milli", "must be in 1..1000, got 1500"),
    Bad("job-fraction-of-two-gpus", lambda: job(gpus=2, gpu_milli=500), "job 'j1'.gpu_milli",
        "a fractional GPU share (500 milli) needs gpus == 1, got 2"),
    Bad("job-nodes-without-shape", lambda: job(nodes=2), "job 'j1'.nodes", "nodes and gpus_per_node go together"),
    Bad("job-zero-nodes", lambda: job(gpus=0, nodes=0, gpus_per_node=8), "job 'j1'.nodes", "must be >= 1, got 0"),
    Bad("job-shape-mismatch", lambda: job(gpus=8, nodes=2, gpus_per_node=8), "job 'j1'.gpus",
        "gpus 8 != nodes 2 x gpus_per_node 8"),
    Bad("job-zero-estimate", lambda: job(runtime_estimate_s=0.0), "job 'j1'.runtime_estimate_s",
        "must be > 0 when set"),
    Bad("job-zero-checkpoint", lambda: job(checkpoint_interval_s=0.0), "job 'j1'.checkpoint_interval_s",
        "must be > 0 when set"),
    Bad("job-negative-restart", lambda: job(restart_cost_s=-1.0), "job 'j1'.restart_cost_s", "must be >= 0"),
    # ProgramRules
    Bad("rules-zero-duration", lambda: rules(max_duration_days=0), "program.rules.max_duration_days",
        "must be >= 1 day"),
    Bad("rules-zero-job-duration", lambda: rules(max_job_duration_s=0.0), "program.rules.max_job_duration_s",
        "must be > 0 seconds when set"),
    Bad("rules-zero-cap", lambda: rules(per_project_cap=(("H200", 0),)), "program.rules.per_project_cap.H200",
        "must be >= 1 GPU, got 0"),
    Bad("rules-price-above-list", lambda: rules(price_factor=(("youth-startup", 1.5),)),
        "program.rules.price_factor.youth-startup", "must be between 0.0 (free) and 1.0 (list price), got 1.5"),
    Bad("rules-negative-weight", lambda: rules(review_weights=(("impact", -1.0),)),
        "program.rules.review_weights.impact", "must be >= 0, got -1.0"),
    Bad("rules-zero-concentration", lambda: rules(concentration_cap_pct=0.0), "program.rules.concentration_cap_pct",
        "must be in (0, 100], got 0.0"),
    Bad("rules-floor-above-100", lambda: rules(utilization_floor_pct=101.0), "program.rules.utilization_floor_pct",
        "must be in [0, 100], got 101.0"),
    Bad("program-zero-weight", lambda: Program("ngg", weight=0.0), "program 'ngg'.weight", "must be > 0, got 0.0"),
    # Review
    Bad("review-score-above-10", lambda: review(scores=(("impact", 11.0),)), "review of 'a1'.scores.impact",
        "must be between 0 and 10, got 11.0"),
    Bad("review-negative-score", lambda: review(scores=(("impact", 5.0), ("readiness", -1.0))),
        "review of 'a1'.scores.readiness", "must be between 0 and 10, got -1.0"),
    # Application
    Bad("application-zero-gpus", lambda: application(gpus=0), "application 'a1'.gpus", "must be >= 1, got 0"),
    Bad("application-zero-months", lambda: application(months=0), "application 'a1'.months", "must be >= 1, got 0"),
    # Tenancy names
    Bad("organization-empty-name", lambda: Organization("", OrgKind.UNIVERSITY), "organization.name",
        NAME_PROBLEM + "''"),
    Bad("project-empty-organization", lambda: Project("llm", ""), "project 'llm'.organization", NAME_PROBLEM + "''"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_construction_raises_exact_validation_error(bad: Bad) -> None:
    with pytest.raises(ValidationError) as info:
        bad.build()
    assert (info.value.where, info.value.problem) == (bad.where, bad.problem)
    assert str(info.value).startswith(f"{bad.where}: {bad.problem}")


@pytest.mark.parametrize(
    ("build", "fix"),
    [
        (lambda: site(pue=0.5), "PUE is facility power / IT power, typically 1.1-1.6"),
        (lambda: cluster(backend="k8s"), "use one of sim, local, slurm, kubernetes"),
        (lambda: job(time_limit_s=-1.0), "every job needs a time limit, as in Slurm (e.g. --time 4:00:00)"),
    ],
    ids=["site-pue", "cluster-backend", "job-time-limit"],
)
def test_validation_error_tells_the_fix(build: Callable[[], object], fix: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert info.value.fix == fix
    assert str(info.value).endswith(f" (fix: {fix})")


def test_valid_builders_construct() -> None:
    assert pool().gpus == 32
    assert pool(gpus_per_node=4, nvlink_domain_gpus=72, nodes_per_rack=18, nodes=36).nodes_per_domain == 18
    assert job(gpus=1, gpu_milli=250).whole_gpus == 0.25
    assert grant().active_on(date(2025, 6, 1)) and not grant().active_on(date(2026, 1, 1))


# --- job state machine (product spec §4): pending -> admitted -> running -> succeeded | failed | cancelled |
# timeout; preempted returns to pending.
S = JobState
ALLOWED = {
    (S.PENDING, S.ADMITTED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.ADMITTED, S.RUNNING), (S.ADMITTED, S.PENDING), (S.ADMITTED, S.CANCELLED), (S.ADMITTED, S.FAILED),
    (S.ADMITTED, S.PREEMPTED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.PREEMPTED),
    (S.PREEMPTED, S.PENDING), (S.PREEMPTED, S.CANCELLED),
}  # fmt: skip
PAIRS = list(product(JobState, JobState))


@pytest.mark.parametrize(("current", "wanted"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_transition_table(current: JobState, wanted: JobState) -> None:
    if (current, wanted) in ALLOWED:
        check_transition("j1", current, wanted)
        return
    with pytest.raises(TransitionError) as info:
        check_transition("j1", current, wanted)
    assert (info.value.current, info.value.wanted) == (current.value, wanted.value)
    allowed = sorted(b.value for a, b in ALLOWED if a is current)
    assert list(TransitionError("j1", current.value, wanted.value, tuple(allowed)).args) == list(info.value.args)


@pytest.mark.parametrize(
    ("current", "wanted", "message"),
    [
        (S.PENDING, S.RUNNING, "cannot go from pending to running; allowed from pending: admitted, cancelled, failed"),
        (S.SUCCEEDED, S.RUNNING, "cannot go from succeeded to running; allowed from succeeded: none (final state)"),
        (S.RUNNING, S.PENDING,
         "cannot go from running to pending; allowed from running: cancelled, failed, preempted, succeeded, timeout"),
        (S.PREEMPTED, S.RUNNING, "cannot go from preempted to running; allowed from preempted: cancelled, pending"),
    ],
    ids=["pending-skips-admission", "succeeded-is-final", "running-must-preempt-first", "preempted-must-requeue"],
)  # fmt: skip
def test_transition_error_message(current: JobState, wanted: JobState, message: str) -> None:
    with pytest.raises(TransitionError) as info:
        check_transition("j1", current, wanted)
    assert str(info.value) == "job j1: " + message


@pytest.mark.parametrize("state", list(JobState), ids=[s.value for s in JobState])
def test_final_states_have_no_way_out(state: JobState) -> None:
    assert state.final == (state in {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMEOUT})
