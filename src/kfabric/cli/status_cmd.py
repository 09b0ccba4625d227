"""``kfabric status``: which server leads, the standbys, the controller lease and the last cycle."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="the servers: leader, standbys, lease epoch, last cycle",
        description="Which kfabric serve process leads (runs the controller), the standbys with their last "
        "heartbeat, the controller lease's epoch and expiry, and the last scheduling cycle. With --json, prints the "
        "API's answer (GET /v1/status).",
    )
    add_remote_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.status()
    if args.json:
        emit_json(answer)
    else:
        print("\n".join(render(answer)))
    return 0


def _when(at_s: float | None) -> str:
    return datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at_s is not None else "-"


def _where(server: dict[str, Any]) -> str:
    if "host" not in server:
        return ""
    return f" on {server['host']} pid {server['pid']} ({server['url']})"


def render(status: dict[str, Any]) -> list[str]:
    """The status as text lines (one server per line)."""
    lease, leader = status["lease"], status["leader"]
    lines = []
    if leader is not None:
        lines.append(f"leader   {leader['id']}{_where(leader)}, since {_when(leader.get('since_s'))}")
    else:
        lines.append("leader   none: the lease is free or expired; a standby takes it at its next try")
    expiry = "" if lease["expires_in_s"] is None else f", expires in {lease['expires_in_s']:.1f} s"
    lines.append(f"lease    {lease['name']} epoch {lease['epoch']}{expiry} (TTL {lease['ttl_s']:g} s)")
    age = status["last_cycle_age_s"]
    cycle = f"{_when(status['last_cycle_s'])} ({age:.1f} s ago)" if age is not None else "none yet"
    lines.append(f"cycle    {cycle}")
    if not status["standbys"]:
        lines.append("standby  none")
    for server in status["standbys"]:
        stale = " STALE (not heard from; pruned later)" if server["stale"] else ""
        role = "" if server["role"] == "standby" else f" (last said {server['role']})"
        heard = f"heartbeat {server['heartbeat_age_s']:.1f} s ago"
        lines.append(f"standby  {server['id']}{_where(server)}, {heard}{role}{stale}")
    return lines
