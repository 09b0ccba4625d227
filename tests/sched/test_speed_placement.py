"""Placement by speed per service unit: pools of a faster-per-SU GPU model first (docs/architecture.md)."""

from __future__ import annotations

import dataclasses

import pytest
from builders import MODELS, a_fleet, a_job, online_capacity, queue_of, snapshot_of, tenant, use

from kfabric.model.fleet import Fleet
from kfabric.model.gpu import GpuModel
from kfabric.scenarios.loader import load_gpu_catalog, load_scenario
from kfabric.sched.capacity import Capacity
from kfabric.sched.cycle import cycle
from kfabric.sched.placement import PlaceRequest, prefer_pools, work_per_su
from kfabric.sched.presets import PRESETS
from kfabric.sched.registry import PLACEMENTS

# two pools of 8-GPU nodes: "h100" (SU weight 1.0) and "b200" (SU weight 2.0 in the test models)
H100, B200 = 0, 1


def two_pools(h100_speed: float | None, b200_speed: float | None, b200_nodes: int = 2) -> Fleet:
    fleet = (
        a_fleet()
        .pool("h100", model="H100", nodes=2, nodes_per_rack=2, racks_per_unit=1)
        .pool("b200", model="B200", nodes=b200_nodes, nodes_per_rack=b200_nodes, racks_per_unit=1)
        .build()
    )
    speeds = {"H100": h100_speed, "B200": b200_speed}
    models = tuple(dataclasses.replace(MODELS[m.name], speed=speeds[m.name]) for m in fleet.gpu_models)
    return dataclasses.replace(fleet, gpu_models=models)


CASES = [
    # (id, H100 speed, B200 speed, request speeds, B200 nodes full, job GPUs, B200 nodes, expected pool)
    ("b200-more-work-per-su", 1.0, 2.5, None, False, 8, 2, "b200"),  # 1.25 work/SU against 1.0
    ("h100-more-work-per-su", 1.0, 1.6, None, False, 8, 2, "h100"),  # 0.8 against 1.0
    ("equal-work-per-su-cheaper-model", 1.0, 2.0, None, False, 8, 2, "h100"),  # tie: as before, cheaper first
    ("no-catalog-speeds-as-before", None, None, None, False, 8, 2, "h100"),  # speed = SU weight: a tie
    ("better-pool-full-falls-through", 1.0, 2.5, None, True, 8, 2, "h100"),  # not otherwise: it must fit
    ("better-pool-too-small-for-the-gang", 1.0, 2.5, None, False, 16, 1, "h100"),  # 16 GPUs: 1 B200 node
    ("per-job-speed-overrides-catalog", 1.0, 2.5, {H100: 3.0}, False, 8, 2, "h100"),  # 3.0 work/SU on H100
]


@pytest.mark.parametrize(
    ("h100", "b200", "speed", "b200_full", "gpus", "b200_nodes", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_kfabric_placement_prefers_more_work_per_su_when_all_else_is_equal(
    h100: float | None,
    b200: float | None,
    speed: dict[int, float] | None,
    b200_full: bool,
    gpus: int,
    b200_nodes: int,
    expected: str,
) -> None:
    cap = online_capacity(two_pools(h100, b200, b200_nodes))
    if b200_full:
        for node in cap.pools[B200].node_range:
            use(cap, node, 8)
    req = PlaceRequest(a_job("j").gpus(gpus).build(), [H100, B200], speed=speed)
    found = PLACEMENTS["kfabric"](cap, req)
    assert found is not None and found.pool == expected


@pytest.mark.parametrize("policy", ["first-fit", "best-fit", "fgd"])
def test_other_placements_ignore_speeds(policy: str) -> None:
    """Only ``kfabric`` is heterogeneity-aware: the others place the same with or without catalog speeds."""
    job = a_job("j").gpus(8).build()
    found = [PLACEMENTS[policy](online_capacity(two_pools(*s)), PlaceRequest(job, [H100, B200])) for s in SPEEDS]
    assert found[0] is not None and found[0] == found[1] == found[2]


SPEEDS: list[tuple[float | None, float | None]] = [(None, None), (1.0, 2.5), (1.0, 1.6)]


@pytest.mark.parametrize(
    ("h100", "b200", "order"),
    [(1.0, 2.5, [B200, H100]), (1.0, 1.6, [H100, B200]), (1.0, 2.0, [H100, B200]), (None, None, [H100, B200])],
)
def test_prefer_pools_orders_by_catalog_speed_per_su(h100: float | None, b200: float | None, order: list[int]) -> None:
    cap = online_capacity(two_pools(h100, b200))
    req = PlaceRequest(a_job("j").build(), [H100, B200])
    assert prefer_pools(cap, req) == order
    assert prefer_pools(cap, req) == order  # the cached order is the same


def test_the_cycle_places_by_catalog_speed_with_no_per_job_input() -> None:
    """The live path: ``sched.cycle`` (the twin's and the controller's) gets the speeds from the fleet alone."""
    fleet = two_pools(1.0, 2.5)
    snap = snapshot_of(fleet, [tenant("a")])
    decision = cycle(snap, queue_of(snap, a_job("j").gpus(8).build()), PRESETS["kfabric"], 0.0)
    assert [a.placement.pool for a in decision.admissions] == ["b200"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("H100", 1.0), ("B200", 2.0 / 2.25), ("RTX-PRO-6000", 0.52 / 0.5), ("GB300", 2.4 / 2.75)],
)
def test_pool_speed_comes_from_the_catalog(model: str, expected: float) -> None:
    """Scenario pools carry their model's catalog speed: korea-2030 and lab, as the service loads them."""
    catalog = load_gpu_catalog()
    assert catalog[model].work_per_su == pytest.approx(expected)
    for name in ("lab", "korea-2030"):
        cap = Capacity(load_scenario(name).fleet)
        for p in cap.pools:
            assert p.speed == catalog[p.model].relative_speed
            req = PlaceRequest(a_job("j").build(), [p.index])
            assert work_per_su(cap, req, p.index) == round(catalog[p.model].work_per_su, 6)


def test_a_model_without_a_speed_counts_as_its_su_weight() -> None:
    m = GpuModel("X", 80, 700, 8, 1.7)
    assert m.relative_speed == 1.7 and m.work_per_su == 1.0
