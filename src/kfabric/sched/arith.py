"""One formula, two forms: placement scores are written once, over operands that are either numpy arrays over
candidate nodes (a placement scanning a pool) or one node's plain Python numbers (a large fleet's handful of
representatives, where numpy's per-call cost dominates: about 70 us a call on one to three nodes against about
10 us in plain Python, measured in docs/benchmarks.md).

A formula takes an :class:`Arith` and uses ``+ - * / //`` and ``[]`` (a table gather, or a list index) on its
operands, and the Arith for everything else. Each operation is the same IEEE double operation in both forms
(numpy's element-wise ufuncs do not fuse or reorder), and sums over a node's GPU slots are written slot by slot
in slot order (never ``sum(axis=...)``, whose order numpy chooses), so both forms give the same bits.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: an operand: a Python int or float (one node) or a numpy array of them (one entry per candidate node)
Vec = Any


def _pick(cond: bool, yes: Vec, no: Vec) -> Vec:
    return yes if cond else no


def _count_le_array(levels: Any, value: Vec) -> Vec:
    return np.searchsorted(levels, value, side="right")


@dataclass(frozen=True, slots=True)
class Arith:
    """The operations of a formula beyond arithmetic and indexing, in one form. ``arrays``: whether operands are
    numpy arrays (a formula picks its tables' array or list form by it)."""

    arrays: bool
    #: ``where(cond, yes, no)``, element-wise for arrays (both branches are evaluated in both forms)
    where: Callable[[Vec, Vec, Vec], Vec]
    maximum: Callable[[Vec, Vec], Vec]
    #: ``count_le(levels, value)``: how many of the sorted ``levels`` are <= ``value``
    count_le: Callable[[Any, Vec], Vec]


ARRAYS = Arith(True, np.where, np.maximum, _count_le_array)
NUMBERS = Arith(False, _pick, max, bisect_right)
