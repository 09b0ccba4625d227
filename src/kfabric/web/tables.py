"""Shared helpers for pages: paging of long tables, query strings of filter links, and Plotly charts.

A chart is a ``<div class="chart" data-figure="...">`` holding the figure's JSON; the portal's script
(``static/portal.js``) draws it with the Plotly bundled in the ``plotly`` package (``/static/plotly.min.js``), so
no page needs an inline script and nothing is loaded from another host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import plotly.graph_objects as go
from markupsafe import Markup, escape

#: rows per page of every paged table
PAGE_SIZE = 50
#: the last page anyone may ask for (a bound, so a huge number is a clear page, not a huge OFFSET)
MAX_PAGE = 100_000


@dataclass(frozen=True, slots=True)
class Paging:
    """Page ``number`` (1-based) of ``total`` rows, ``size`` per page."""

    number: int
    total: int
    size: int = PAGE_SIZE

    @classmethod
    def of(cls, asked: str | None, total: int, size: int = PAGE_SIZE) -> Paging:
        """The page asked in a query string (``?page=N``), clamped to the pages there are."""
        try:
            n = int(asked) if asked else 1
        except ValueError:
            n = 1
        last = max(1, math.ceil(total / size))
        return cls(min(max(n, 1), last, MAX_PAGE), total, size)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def first_row(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last_row(self) -> int:
        return min(self.offset + self.size, self.total)

    @property
    def previous(self) -> int | None:
        return self.number - 1 if self.number > 1 else None

    @property
    def next(self) -> int | None:
        return self.number + 1 if self.number < self.pages else None


def query(filters: dict[str, Any], **changes: Any) -> str:
    """``?a=1&b=2``: ``filters`` with ``changes`` applied; empty values are left out."""
    merged = {**filters, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "") and not (k == "page" and v == 1)}
    return "?" + urlencode(kept) if kept else "?"


def chart(fig: go.Figure, label: str) -> Markup:
    """The figure as a chart element (drawn by portal.js); ``label`` names it for screen readers."""
    fig.update_layout(margin={"l": 50, "r": 20, "t": 30, "b": 40}, template="plotly_white", autosize=True)
    data = fig.to_json()
    return Markup('<div class="chart" role="img" aria-label="{}" data-figure="{}"></div>').format(label, escape(data))
