"""Times for people: in the user's time zone, with the zone shown. The zone comes from the session (set on the
preferences form), else from the ``kfabric_tz`` cookie the portal's script sets from the browser, else UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DEFAULT_ZONE = "UTC"
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


def zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone ``name`` (e.g. ``Asia/Seoul``), or None when it is not a known zone name."""
    if not name or len(name) > 64 or not _ZONE_NAME.match(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@cache
def zone_names() -> tuple[str, ...]:
    """Every IANA zone this machine knows (the preferences form offers them)."""
    return tuple(sorted(available_timezones()))


def when(epoch_s: float | None, tz: tzinfo, empty: str = "—") -> str:
    """``2026-05-28 14:03:07 KST``: the instant in ``tz``, with the zone's abbreviation."""
    if epoch_s is None:
        return empty
    local = datetime.fromtimestamp(epoch_s, UTC).astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or str(tz))


def day(epoch_s: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).astimezone(tz).strftime("%Y-%m-%d")


def iso_local(epoch_s: float, tz: tzinfo) -> str:
    """ISO 8601 with the zone's offset (chart axes: Plotly shows the local wall time)."""
    return datetime.fromtimestamp(epoch_s, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """``2d 3h``, ``4h 05m``, ``12m 30s``, ``45s``."""
    if seconds is None:
        return "—"
    s = max(round(seconds), 0)
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"
