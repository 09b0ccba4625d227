"""``kfabric grant topup GRANT --su-hours N --note TEXT``: an operator adds credit to a grant (audited).

Registered under the ``grant`` command that ``programs_cmd`` makes, so it must be registered after it."""

from __future__ import annotations

import argparse
import math
from typing import TypeAlias

from kfabric.cli.errors import UsageError
from kfabric.cli.main import Subparsers, subcommands
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json

Sub: TypeAlias = "Subparsers"


def register(sub: Sub) -> None:
    grant = sub.choices["grant"]
    grant_sub = subcommands(grant)
    p = grant_sub.add_parser("topup", help="add service-unit credit to a grant (operators; audited)")
    p.add_argument("grant", metavar="GRANT", help="the grant's name (kfabric grant list shows them)")
    p.add_argument("--su-hours", required=True, metavar="N", help="service-unit hours to add (> 0)")
    p.add_argument("--note", required=True, metavar="TEXT", help="why the grant gets more credit (audited)")
    add_remote_args(p)
    p.set_defaults(handler=topup_cmd)


def _su_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1e12):
        raise UsageError(f"--su-hours: expected service-unit hours > 0 (e.g. 500), got {text!r}")
    return value


def topup_cmd(args: argparse.Namespace) -> int:
    su = _su_hours(args.su_hours)
    if not args.note.strip():
        raise UsageError("--note: say why the grant gets more credit (it is kept in the audit log)")
    with connect(args) as client:
        g = client.top_up(args.grant, su, args.note)
    if args.json:
        emit_json(g)
        return 0
    print(
        f"Grant {g['name']}: +{su:,.1f} SU-hours, credit {g['credit_su_hours']:,.1f}, "
        f"used {g['used_su_hours']:,.1f}, left {g['left_su_hours']:,.1f}"
    )
    return 0
