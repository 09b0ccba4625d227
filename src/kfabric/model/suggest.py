""" "Did you mean ...?" for a mistyped name: one rule for every place that refuses a name (policies, scenarios,
subcommands, states, options, projects)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_name(name: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (case-insensitive, punctuation-tolerant), or None when none is close."""

    def key(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    keyed: dict[str, str] = {}
    for c in choices:
        keyed.setdefault(key(c), c)
    want = key(name)
    if want in keyed:
        return keyed[want]
    hits = difflib.get_close_matches(want, list(keyed), n=1, cutoff=0.6)
    return keyed[hits[0]] if hits else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean X?)"`` for the closest of ``choices`` to ``name``, or ``""``."""
    hit = closest_name(name, choices)
    return f" (did you mean {hit}?)" if hit is not None and hit != name else ""
