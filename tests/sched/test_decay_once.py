"""Decay is written once: ``fairshare.decay`` is the only half-life formula in the sources, and it halves usage
once per half-life."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kfabric
from kfabric.sched import fairshare

SRC = Path(kfabric.__file__).parent
#: half-life maths: a power of one half, or an exponential of a multiple of ln 2
HALF_LIFE = re.compile(r"pow\(\s*0?\.5\b|\b0?\.5\s*\*\*|exp2\(|log\(\s*2(\.0)?\s*\)|\bLN2\b|\bln2\b", re.IGNORECASE)


def _formulas(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HALF_LIFE.search(line.split("#", 1)[0])
    ]


def test_the_only_decay_formula_is_fairshare_decay() -> None:
    found = _formulas(SRC)
    assert [where.split(":")[0] for where in found] == ["sched/fairshare.py"]
    assert "def decay(" in (SRC / "sched/fairshare.py").read_text()


def test_the_scan_finds_other_ways_of_writing_it(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "x = u * 0.5 ** (t / h)\ny = u * math.pow(0.5, t / h)\nz = u * math.exp(-t * math.log(2) / h)\n"
        "w = u * 2 ** (-t / h)  # not matched: a factor written as a power of two is fairshare.factors' form\n"
    )
    assert _formulas(tmp_path) == ["a.py:1", "a.py:2", "a.py:3"]


@pytest.mark.parametrize(("elapsed", "left"), [(0.0, 80.0), (3_600.0, 40.0), (7_200.0, 20.0), (1_800.0, 80.0 / 2**0.5)])
def test_usage_halves_every_half_life(elapsed: float, left: float) -> None:
    assert fairshare.decay(80.0, elapsed, 3_600.0) == pytest.approx(left, rel=1e-12)
