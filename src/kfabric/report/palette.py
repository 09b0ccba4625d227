"""Colours of the report: one per run (table swatches and chart lines) and one per owner, site or part."""

from __future__ import annotations

from collections.abc import Sequence

from plotly.colors import qualitative

RUN_COLORS = qualitative.Plotly
PART_COLORS = qualitative.D3 + qualitative.Dark24


def run_color(i: int) -> str:
    return str(RUN_COLORS[i % len(RUN_COLORS)])


def part_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: str(PART_COLORS[i % len(PART_COLORS)]) for i, n in enumerate(names)}
