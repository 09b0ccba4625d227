"""The capacity index: take/give/set_up keep every aggregate exact, and rollback undoes them exactly."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from builders import a_fleet, capacity_state, check_invariants, hgx_fleet

from kfabric.model import Classification, Fleet
from kfabric.sched.capacity import Capacity


def online(fleet: Fleet) -> Capacity:
    cap = Capacity(fleet)
    for i in range(len(cap.pools)):
        cap.set_pool_online(i, True)
    return cap


def two_sites() -> Fleet:
    return (
        a_fleet()
        .site("gov", Classification.RESTRICTED, power_cap_mw=1.0)
        .site("acme", Classification.INTERNAL, power_cap_mw=0.5)
        .pool("h100", site="gov", nodes=4, node_kw=10.0)
        .pool("rtx", site="acme", model="RTX", nodes=2, nodes_per_rack=2, racks_per_unit=1, node_kw=6.4)
        .build()
    )


# ---- the index as built --------------------------------------------------------------------------------------
def test_new_capacity_is_down_until_its_pool_is_online() -> None:
    cap = Capacity(hgx_fleet())
    assert cap.up.tolist() == [False] * 4
    assert cap.pool_up_milli.tolist() == [0]
    assert cap.rack_full.tolist() == [0, 0]
    assert cap.fresh == [{}]
    check_invariants(cap)


def test_online_pool_puts_every_node_of_whole_racks_in_fresh() -> None:
    cap = online(hgx_fleet(nodes=5))  # racks of 2: the last rack holds one node
    assert cap.rack_size.tolist() == [2, 2, 1]
    assert cap.unit_size.tolist() == [4, 1]
    assert cap.rack_full.tolist() == [2, 2, 1]
    assert cap.unit_full.tolist() == [4, 1]
    assert cap.rack_gpus.tolist() == [16, 16, 8]
    assert cap.unit_gpus.tolist() == [32, 8]
    assert sorted(cap.fresh[0]) == [0, 1, 2, 3, 4]
    assert all(not b for b in cap.buckets[0])
    assert cap.pool_milli.tolist() == [40_000]
    assert cap.pool_up_milli.tolist() == [40_000]
    check_invariants(cap)


def test_pools_get_consecutive_nodes_racks_and_units() -> None:
    cap = online(two_sites())
    h, r = cap.pools
    assert (h.first_node, h.nodes, h.first_rack, h.racks, h.first_unit, h.units) == (0, 4, 0, 2, 0, 1)
    assert (r.first_node, r.nodes, r.first_rack, r.racks, r.first_unit, r.units) == (4, 2, 2, 1, 1, 1)
    assert cap.node_rack.tolist() == [0, 0, 1, 1, 2, 2]
    assert cap.node_unit.tolist() == [0, 0, 0, 0, 1, 1]
    assert (cap.sites[0].cap_kw, cap.sites[1].cap_kw) == (1000.0, 500.0)
    assert h.kw_per_gpu == pytest.approx(1.25)
    assert r.kw_per_gpu == pytest.approx(0.8)


# ---- take / give -----------------------------------------------------------------------------------------------
def test_take_whole_gpus_breaks_the_rack_and_moves_its_other_node() -> None:
    cap = online(hgx_fleet())
    cap.take(0, (0, 1, 2), 1000, 12_000, 96_000)
    assert cap.milli[0].tolist() == [0, 0, 0, 1000, 1000, 1000, 1000, 1000]
    assert cap.whole.tolist() == [5, 8, 8, 8]
    assert cap.cpu_free[0] == 112_000 - 12_000
    assert cap.mem_free[0] == 2_097_152 - 96_000
    assert list(cap.buckets[0][5]) == [0]
    assert list(cap.buckets[0][8]) == [1]  # fully free, but its rack is broken now
    assert sorted(cap.fresh[0]) == [2, 3]
    assert cap.rack_full.tolist() == [1, 2]
    assert cap.unit_full.tolist() == [3]
    assert cap.rack_gpus.tolist() == [13, 16]
    assert cap.unit_gpus.tolist() == [29]
    assert cap.pool_milli.tolist() == [29_000]
    assert cap.site_kw.tolist() == pytest.approx([3.75])
    assert not cap.rack_whole(0) and cap.rack_whole(1)
    assert cap.free_gpus_on(0) == [3, 4, 5, 6, 7]
    check_invariants(cap)


def test_fractional_take_leaves_a_shared_gpu_not_whole() -> None:
    cap = online(hgx_fleet())
    cap.take(2, (4,), 250, 1_000, 1_024)
    assert cap.milli[2].tolist() == [1000] * 4 + [750] + [1000] * 3
    assert cap.whole[2] == 7
    assert list(cap.buckets[0][7]) == [2]
    assert cap.pool_milli.tolist() == [31_750]
    assert cap.site_kw.tolist() == pytest.approx([1.25 * 0.25])
    check_invariants(cap)


@pytest.mark.python_only
def test_a_copied_capacity_changes_its_own_arrays_only() -> None:
    # the element views the hot path writes through are rebuilt over the copy's arrays, not the original's
    cap = online(hgx_fleet())
    before = capacity_state(cap)
    twin = copy.deepcopy(cap)
    twin.take(2, (0, 1, 2, 3, 4, 5, 6, 7), 1000, 8_000, 1_024)
    twin.take(1, (4,), 250, 1_000, 1_024)
    assert capacity_state(cap) == before
    assert twin.whole[2] == 0 and twin.milli[1, 4] == 750 and twin.cpu_free[2] == cap.cpu_free[2] - 8_000
    check_invariants(cap)
    check_invariants(twin)


def test_give_after_take_restores_values_and_makes_the_rack_whole_again() -> None:
    cap = online(hgx_fleet())
    before = capacity_state(cap)
    cap.take(1, (0, 1, 2, 3, 4, 5, 6, 7), 1000, 50_000, 1_000)
    cap.give(1, (0, 1, 2, 3, 4, 5, 6, 7), 1000, 50_000, 1_000)
    after = capacity_state(cap)
    assert sorted(cap.fresh[0]) == [0, 1, 2, 3]
    for key in before:
        if key not in ("buckets", "fresh"):
            assert after[key] == before[key], key
    check_invariants(cap)


def test_site_power_draw_is_per_site() -> None:
    cap = online(two_sites())
    cap.take(0, (0, 1, 2, 3), 1000, 0, 0)  # 4 H100 at 1.25 kW
    cap.take(4, (0, 1), 1000, 0, 0)  # 2 RTX at 0.8 kW
    cap.take(5, (3,), 500, 0, 0)  # half an RTX
    assert cap.site_kw.tolist() == pytest.approx([5.0, 2.0])
    cap.give(0, (0, 1), 1000, 0, 0)
    assert cap.site_kw.tolist() == pytest.approx([2.5, 2.0])
    check_invariants(cap)


# ---- up / down -------------------------------------------------------------------------------------------------
def test_node_down_leaves_every_index_and_breaks_its_rack() -> None:
    cap = online(hgx_fleet())
    cap.set_up(3, False)
    assert cap.up.tolist() == [True, True, True, False]
    assert cap.pool_up_milli.tolist() == [24_000]
    assert cap.pool_milli.tolist() == [24_000]
    assert cap.rack_full.tolist() == [2, 1]
    assert cap.rack_gpus.tolist() == [16, 8]
    assert sorted(cap.fresh[0]) == [0, 1]
    assert list(cap.buckets[0][8]) == [2]
    assert not cap.node_full(3)
    check_invariants(cap)
    cap.set_up(3, True)
    assert sorted(cap.fresh[0]) == [0, 1, 2, 3]
    assert cap.rack_full.tolist() == [2, 2]
    check_invariants(cap)


def test_set_up_twice_is_a_no_op() -> None:
    cap = online(hgx_fleet())
    cap.logging = True
    cap.set_up(0, True)
    assert cap.mark() == 0
    cap.set_up(0, False)
    cap.set_up(0, False)
    assert cap.mark() == 1


def test_work_on_a_down_node_comes_back_with_it() -> None:
    cap = online(hgx_fleet())
    cap.take(0, (0, 1), 1000, 8_000, 64)
    cap.set_up(0, False)
    assert cap.pool_milli.tolist() == [24_000]
    cap.give(0, (0, 1), 1000, 8_000, 64)  # the job ends while the node is down
    check_invariants(cap)
    cap.set_up(0, True)
    assert cap.pool_milli.tolist() == [32_000]
    assert sorted(cap.fresh[0]) == [0, 1, 2, 3]
    check_invariants(cap)


def test_site_power_counts_work_on_down_nodes() -> None:
    cap = online(hgx_fleet())
    cap.take(0, (0, 1), 1000, 0, 0)
    cap.set_up(0, False)
    assert cap.site_kw.tolist() == pytest.approx([2.5])


# ---- undo log ----------------------------------------------------------------------------------------------------
Op = Callable[[Capacity], None]

OPS: list[tuple[str, list[Op]]] = [
    ("take-whole", [lambda c: c.take(0, (0, 1, 2), 1000, 12_000, 96)]),
    ("take-fraction", [lambda c: c.take(1, (5,), 300, 500, 10)]),
    ("take-whole-node", [lambda c: c.take(2, tuple(range(8)), 1000, 0, 0)]),
    ("give-running", [lambda c: c.give(3, (0, 1), 1000, 4_000, 64)]),
    ("down", [lambda c: c.set_up(1, False)]),
    ("down-up", [lambda c: c.set_up(1, False), lambda c: c.set_up(1, True)]),
    (
        "mixed",
        [
            lambda c: c.take(0, (3, 4), 1000, 1_000, 1),
            lambda c: c.set_up(2, False),
            lambda c: c.take(1, (0,), 600, 1_000, 1),
            lambda c: c.take(1, (0,), 400, 1_000, 1),
            lambda c: c.give(3, (0, 1), 1000, 4_000, 64),
            lambda c: c.set_up(2, True),
            lambda c: c.take(2, tuple(range(8)), 1000, 0, 0),
        ],
    ),
]


def _with_running_work() -> Capacity:
    """Four nodes; node 3 runs a 2-GPU job (so ``give`` has something to give back)."""
    cap = online(hgx_fleet())
    cap.take(3, (0, 1), 1000, 4_000, 64)
    return cap


@pytest.mark.parametrize("ops", [ops for _, ops in OPS], ids=[name for name, _ in OPS])
def test_rollback_restores_every_array_and_bucket_exactly(ops: list[Op]) -> None:
    cap = _with_running_work()
    before = capacity_state(cap)
    cap.logging = True
    mark = cap.mark()
    for op in ops:
        op(cap)
        check_invariants(cap)
    assert cap.mark() > mark
    cap.rollback(mark)
    assert cap.mark() == mark
    assert capacity_state(cap) == before
    check_invariants(cap)


def test_rollback_to_an_inner_mark_keeps_the_outer_changes() -> None:
    cap = _with_running_work()
    cap.logging = True
    outer = cap.mark()
    cap.take(0, (0,), 1000, 0, 0)
    middle = capacity_state(cap)
    inner = cap.mark()
    cap.take(1, (0, 1, 2, 3), 1000, 0, 0)
    cap.set_up(2, False)
    cap.rollback(inner)
    assert capacity_state(cap) == middle
    cap.rollback(outer)
    assert cap.whole.tolist() == [8, 8, 8, 6]
    check_invariants(cap)


def test_rollback_does_not_log_its_own_changes() -> None:
    cap = online(hgx_fleet())
    cap.logging = True
    cap.take(0, (0,), 1000, 0, 0)
    cap.rollback(0)
    assert cap.mark() == 0
    assert cap.logging is True


def test_changes_are_not_logged_unless_logging() -> None:
    cap = online(hgx_fleet())
    cap.take(0, (0,), 1000, 0, 0)
    cap.set_up(1, False)
    assert cap.mark() == 0
    cap.rollback(0)
    assert cap.whole.tolist() == [7, 8, 8, 8]


def test_forget_makes_changes_permanent() -> None:
    cap = online(hgx_fleet())
    cap.logging = True
    cap.take(0, (0,), 1000, 0, 0)
    cap.forget()
    cap.rollback(0)
    assert cap.whole.tolist() == [7, 8, 8, 8]
    check_invariants(cap)


def test_node_names_follow_the_pool() -> None:
    cap = online(two_sites())
    assert [cap.node_name(i) for i in (0, 3, 4, 5)] == ["h100-n00000", "h100-n00003", "rtx-n00000", "rtx-n00001"]
