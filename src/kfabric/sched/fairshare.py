"""Hierarchical fair share: program -> organization -> project, weights from grants, decayed SU usage.

A project's share is the product of its normalized weight at each level of the tree. Its fair-share factor
is Slurm's classic ``2 ** (-usage / share)`` with usage normalized over all projects: 1.0 for an unused
project, 0.5 when it used exactly its share, towards 0 beyond. Usage is service units (GPU-seconds times the
model's SU weight), decayed with a half-life.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """Where a project sits in the fair-share tree and whose pools it may use as owner."""

    project: str
    organization: str
    program: str
    weight: float = 1.0
    program_weight: float = 1.0
    affiliation: str = ""


def decay(usage_su: float, elapsed_s: float, half_life_s: float) -> float:
    return usage_su * math.pow(0.5, elapsed_s / half_life_s)


def shares(tenants: Mapping[str, TenantInfo]) -> dict[str, float]:
    """Normalized share of each project (sums to 1 over the tree)."""
    programs: dict[str, float] = {}
    org_weight: dict[tuple[str, str], float] = defaultdict(float)
    proj_in_org: dict[tuple[str, str], float] = defaultdict(float)
    for t in tenants.values():
        programs[t.program] = t.program_weight
        org_weight[(t.program, t.organization)] += t.weight
        proj_in_org[(t.program, t.organization)] += t.weight
    program_total = sum(programs.values()) or 1.0
    org_total: dict[str, float] = defaultdict(float)
    for (prog, _org), w in org_weight.items():
        org_total[prog] += w
    out: dict[str, float] = {}
    for name, t in tenants.items():
        key = (t.program, t.organization)
        s_prog = programs[t.program] / program_total
        s_org = org_weight[key] / (org_total[t.program] or 1.0)
        s_proj = t.weight / (proj_in_org[key] or 1.0)
        out[name] = s_prog * s_org * s_proj
    return out


def factors(
    tenants: Mapping[str, TenantInfo], usage_su: Mapping[str, float], share: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Fair-share factor in (0, 1] per project (``share`` may pass precomputed :func:`shares`)."""
    share = shares(tenants) if share is None else share
    total = sum(max(u, 0.0) for u in usage_su.values())
    out: dict[str, float] = {}
    for name, s in share.items():
        u = usage_su.get(name, 0.0) / total if total > 0 else 0.0
        out[name] = math.pow(2.0, -u / s) if s > 0 else 0.0
    return out
