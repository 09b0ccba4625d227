"""API tokens: ``kfabric token create [--name NAME] [--expires 30d|DATE] [--user USER]``, ``token list [--user
USER] [--all]``, ``token revoke ID|PREFIX`` and ``token rotate ID|PREFIX``. A secret is printed once, when it is
made; lists show ids and prefixes (``kf_`` and 7 characters), never secrets."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from rich.table import Table
from rich.text import Text

from kfabric.cli.admin_cmd import command_group
from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, fmt_time

if TYPE_CHECKING:
    from kfabric.cli.main import Subparsers

Sub: TypeAlias = "Subparsers"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"^([0-9]{1,6})([smhdw])$")
_PREFIX_LEN = 10
_REF_HELP = "the token's id or prefix (kf_ and 7 characters), as `kfabric token list` shows them"


def parse_expiry(text: str) -> tuple[float | None, float | None]:
    """``--expires``: a duration (``30d``, ``12h``, ``2w``; s/m/h/d/w) as ``(seconds, None)``, or a UTC date or
    date-time (``2026-12-31``, ``2026-12-31T18:00``) as ``(None, POSIX seconds)``."""
    value = text.strip()
    m = _DURATION.match(value)
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise UsageError(f"--expires {text!r}: a duration must be longer than 0 (e.g. 30d)")
        return float(seconds), None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--expires {text!r}: expected a duration such as 30d, 12h, 2w, or a UTC date such as 2026-12-31"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None, moment.timestamp()


def token_ref(text: str) -> str:
    """``ID|PREFIX`` as the API takes it; a whole secret is refused here, so it never travels in a URL."""
    value = text.strip()
    if value.startswith("kf_") and len(value) > _PREFIX_LEN:
        raise UsageError(f"ID|PREFIX: that is a whole token secret; pass its prefix {value[:_PREFIX_LEN]} or its id")
    if not value:
        raise UsageError(f"ID|PREFIX: empty; pass {_REF_HELP}")
    return value


def register(sub: Sub) -> None:
    token = command_group(sub, "token", "API tokens: create, list, revoke, rotate")
    p = token.add_parser("create", help="create a token and print its secret once")
    p.add_argument("--name", default="", metavar="NAME", help="what the token is for (e.g. laptop, ci)")
    p.add_argument("--expires", metavar="30d|DATE", help="a duration (30d, 12h, 2w) or a UTC date (2026-12-31)")
    p.add_argument("--user", metavar="USER", help="for another user (operators; org-admins in their organization)")
    add_remote_args(p)
    p.set_defaults(handler=create)

    p = token.add_parser("list", help="your tokens (or USER's): id, name, prefix, created, expires, last used")
    p.add_argument("--user", metavar="USER", help="another user's tokens (operators; org-admins)")
    p.add_argument("--all", action="store_true", help="also revoked and expired tokens")
    add_remote_args(p)
    p.set_defaults(handler=list_)

    p = token.add_parser("revoke", help="revoke a token: it stops working at once")
    p.add_argument("ref", metavar="ID|PREFIX", help=_REF_HELP)
    add_remote_args(p)
    p.set_defaults(handler=revoke)

    p = token.add_parser("rotate", help="a new secret with the same name and lifetime; the old one is revoked")
    p.add_argument("ref", metavar="ID|PREFIX", help=_REF_HELP)
    add_remote_args(p)
    p.set_defaults(handler=rotate)


def _expiry_text(expires_at_s: float | None) -> str:
    return "never" if expires_at_s is None else fmt_time(expires_at_s)


def _print_secret(tok: dict[str, Any], verb: str) -> None:
    print(
        f"{verb} token {tok['id']} ({tok['prefix']}, name {tok['name'] or '-'}) for {tok['user']}, "
        f"expires {_expiry_text(tok['expires_at_s'])}. Its secret, shown only now:"
    )
    print(tok["token"])


def create(args: argparse.Namespace) -> int:
    expires_in, expires_at = parse_expiry(args.expires) if args.expires else (None, None)
    with connect(args) as client:
        tok = client.create_token(args.name, args.user, expires_in, expires_at)
    if args.json:
        emit_json(tok)
    else:
        _print_secret(tok, "Created")
    return 0


def list_(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.tokens(args.user, args.all)
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="API tokens")
    for name in ("ID", "user", "name", "prefix", "created", "expires", "last used", "state"):
        table.add_column(name, justify="right" if name == "ID" else "left")
    for r in rows:
        table.add_row(
            str(r["id"]),
            Text(r["user"]),
            Text(r["name"] or "-"),
            r["prefix"],
            fmt_time(r["created_at_s"]),
            _expiry_text(r["expires_at_s"]),
            fmt_time(r["last_used_s"]),
            r["state"],
        )
    stdout_console().print(table)
    return 0


def revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        tok = client.revoke_token(token_ref(args.ref))
    if args.json:
        emit_json(tok)
    else:
        print(f"Revoked token {tok['id']} ({tok['prefix']}, name {tok['name'] or '-'}) of {tok['user']}")
    return 0


def rotate(args: argparse.Namespace) -> int:
    with connect(args) as client:
        tok = client.rotate_token(token_ref(args.ref))
    if args.json:
        emit_json(tok)
    else:
        _print_secret(tok, f"Revoked token {tok['replaces']}; new")
    return 0
