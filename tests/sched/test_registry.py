"""The registry answers: every policy part is a registered mode, resolved once per policy; nothing in the core
compares a policy name or a function by identity."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from builders import a_fleet, online_capacity

from kfabric.model.errors import ValidationError
from kfabric.model.fleet import Sharing
from kfabric.sched import bounded, placement, registry, single
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.policy import BACKFILL_MODES, Policy
from kfabric.sched.presets import PRESETS
from kfabric.sched.registry import BackfillMode, Preemption
from kfabric.sched.single import Ask
from kfabric.sched.workload import own_shape

SCHED = Path(registry.__file__).parent


def test_every_registered_name_resolves_to_its_mode() -> None:
    for name, mode in registry.ORDERING_MODES.items():
        assert Policy(ordering=name).modes().ordering is mode and mode.keys is registry.ORDERINGS[name]
    for name, place in registry.PLACEMENT_MODES.items():
        assert Policy(placement=name).modes().placement is place and place.place is registry.PLACEMENTS[name]
    for name, backfill in registry.BACKFILL_MODES.items():
        assert Policy(backfill=name).modes().backfill is backfill
    assert BACKFILL_MODES == ("none", "easy", "conservative")


def test_a_policy_resolves_once_per_set_of_names() -> None:
    a, b = Policy(name="a", grace_s=1.0), Policy(name="b", grace_s=2.0)
    assert a.modes() is b.modes()
    assert Policy(backfill="none").modes() is not a.modes()


def test_only_fgd_measures_against_the_queue_and_only_kfabric_remembers_node_terms() -> None:
    queue = {n for n, m in registry.PLACEMENT_MODES.items() if m.queue_workload}
    few = {n for n, m in registry.PLACEMENT_MODES.items() if m.scorer is not None and m.scorer.terms is not None}
    scored = {n for n, m in registry.PLACEMENT_MODES.items() if m.scorer is not None}
    assert (queue, few, scored) == ({"fgd"}, {"kfabric"}, {"best-fit", "fgd", "kfabric"})
    for name in scored:
        scorer = registry.PLACEMENT_MODES[name].scorer
        assert scorer is not None and scorer.name == name


@pytest.mark.parametrize(
    ("name", "blocks", "limit"),
    [("none", True, 0), ("easy", False, 3), ("conservative", False, 40)],
)
def test_backfill_modes_say_what_they_do(name: str, blocks: bool, limit: int) -> None:
    mode = Policy(backfill=name, reservations=3, bf_max_job_test=40).modes().backfill
    assert (mode.blocks_pools, mode.reservation_limit(3, 40)) == (blocks, limit)


def test_a_mode_that_reserves_nothing_has_no_limit_to_give() -> None:
    assert (
        BackfillMode("x", blocks_pools=False, reserves=False, reserves_every_tested=True).reservation_limit(5, 9) == 0
    )


def test_preemption_switches_resolve_to_the_registered_modes() -> None:
    assert set(registry.PREEMPTION_MODES) == {"priority", "service", "reclaim"}
    for mode in registry.PREEMPTION_MODES.values():
        assert hasattr(Policy(), mode.flag), mode.flag
    p = Policy(preempt_by_priority=False, preempt_by_service=True, reclaim=False).modes().preemption
    assert p == Preemption(by_priority=False, by_service=True, reclaim=False) and p.preempts and p.ranked
    q = Policy(preempt_by_priority=False, preempt_by_service=False, reclaim=True).modes().preemption
    assert q.preempts and not q.ranked
    assert not Policy(preempt_by_priority=False, reclaim=False).modes().preemption.preempts
    assert PRESETS["las"].modes().preemption.by_service and not PRESETS["fifo"].modes().preemption.by_priority


@pytest.mark.parametrize(
    ("data", "where", "hint"),
    [
        ({"placement": "bestfit"}, "policy.placement", "(did you mean best-fit?)"),
        ({"placement": "FGD"}, "policy.placement", "(did you mean fgd?)"),
        ({"ordering": "multi-factor"}, "policy.ordering", "(did you mean multifactor?)"),
        ({"backfill": "Easy"}, "policy.backfill", "(did you mean easy?)"),
        ({"backfill": "conservativ"}, "policy.backfill", "(did you mean conservative?)"),
    ],
)
def test_a_mistyped_name_says_which_was_meant(data: dict[str, str], where: str, hint: str) -> None:
    with pytest.raises(ValidationError) as info:
        Policy.from_mapping(data)
    assert info.value.where == where and info.value.fix.endswith(hint) and info.value.fix.startswith("use one of: ")
    with pytest.raises(ValidationError) as scoped:
        Policy.from_mapping(data, where="scenario.policy")
    assert scoped.value.where == "scenario." + where


def test_a_choice_among_few_nodes_is_the_scorers_own_choice() -> None:
    cap = online_capacity(a_fleet().pool("a", gpus_per_node=4, nodes=5).build())
    ask = Ask(2, 1000, 0, 0, (0,), "job-7")
    nodes = [4, 1, 3]
    workload = own_shape(ask.milli, ask.gpus, ask.cpu, ask.mem)
    memo = PlacementMemo()
    for scorer in (placement.BEST_FIT, placement.FGD, placement.KFABRIC):
        got = bounded.choose(scorer, cap, nodes, ask, workload, memo)
        assert got == scorer.over(cap, np.array(nodes), ask, workload)
    assert placement.KFABRIC.over is single.kfabric and placement.KFABRIC.terms is single.kfabric_terms
    assert len(memo.terms) == 1  # kfabric's terms of the three (equally empty) nodes: one entry; others have none


def _names() -> set[str]:
    return {*registry.ORDERING_MODES, *registry.PLACEMENT_MODES, *registry.BACKFILL_MODES}


def _offences(path: Path) -> list[str]:
    """``==``/``!=`` against a registered policy name, and ``is`` against a module's function."""
    names, modules = _names(), {p.stem for p in SCHED.glob("*.py")}
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for op, right in zip(node.ops, node.comparators, strict=True):
            sides = (node.left, right)
            if isinstance(op, ast.Eq | ast.NotEq) and any(
                isinstance(s, ast.Constant) and s.value in names for s in sides
            ):
                found.append(f"{path.name}:{node.lineno}")
            if isinstance(op, ast.Is | ast.IsNot) and any(
                isinstance(s, ast.Attribute) and isinstance(s.value, ast.Name) and s.value.id in modules for s in sides
            ):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_nothing_in_the_core_compares_a_policy_name_or_a_function() -> None:
    offences = [o for p in sorted(SCHED.glob("*.py")) if p.name != "registry.py" for o in _offences(p)]
    assert offences == []


def test_the_check_above_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('if policy.backfill == "none":\n    pass\nif scorer is single.kfabric:\n    pass\n')
    assert _offences(bad) == ["bad.py:1", "bad.py:3"]
    fine = tmp_path / "fine.py"
    fine.write_text("if pool.sharing is Sharing.SHARED:\n    pass\n")
    assert _offences(fine) == [] and Sharing.SHARED.value == "shared"
