"""``kfabric project webhook-secret PROJECT [--rotate]``: the secret that signs the project's job webhooks
(``kfabric submit --notify URL``), for the project's admins. Added to the ``project`` command that ``admin_cmd``
makes, so this module registers after it."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from kfabric.cli.main import Subparsers, subcommands
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json

Sub: TypeAlias = "Subparsers"


def register(sub: Sub) -> None:
    project = sub.choices["project"]
    project_sub = subcommands(project)
    p = project_sub.add_parser(
        "webhook-secret",
        help="show (or --rotate) the secret that signs the project's job webhooks (operators, org-admins; audited)",
        description="Every webhook POST of a job (kfabric submit --notify URL) carries X-Kfabric-Timestamp: T and "
        "X-Kfabric-Signature: sha256=HEX, HEX = HMAC-SHA256(secret, T + '.' + raw body). Receivers recompute it, "
        "compare in constant time and refuse old timestamps. The secret is made on first use.",
    )
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--rotate", action="store_true", help="replace the secret (webhooks are signed with the new one)")
    add_remote_args(p)
    p.set_defaults(handler=webhook_secret)


def webhook_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.webhook_secret(args.project, rotate=args.rotate)
    if args.json:
        emit_json(answer)
        return 0
    print(answer["secret"])
    return 0
