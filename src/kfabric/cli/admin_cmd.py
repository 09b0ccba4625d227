"""Tenancy and oversight: ``kfabric user create|set-posix``, ``org create|list``, ``project create|list`` (also
``kfabric projects``), ``whoami`` and ``audit [--verify]``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, fmt_time
from kfabric.service import audit_keys
from kfabric.service.audit_keys import ENV_KEY_FILE

ROLES = ("operator", "reviewer", "org-admin", "member", "provider")
if TYPE_CHECKING:
    from kfabric.cli.main import Subparsers

Sub: TypeAlias = "Subparsers"


def command_group(sub: Sub, name: str, help_text: str) -> Sub:
    """A command with actions (NAME ACTION ...); alone it prints its help and exits 2."""
    parent = sub.add_parser(name, help=help_text)
    children = parent.add_subparsers(dest=f"{name}_command", metavar="ACTION")

    def usage(_args: argparse.Namespace) -> int:
        parent.print_help()
        return 2

    parent.set_defaults(handler=usage)
    return children


def register(sub: Sub) -> None:
    user = command_group(sub, "user", "create users (their API token is shown once) and map them to POSIX accounts")
    p = user.add_parser("create", help="create a user and print its API token once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, metavar="R", help=f"one of: {', '.join(ROLES)}")
    p.add_argument("--organization", metavar="O", help="the organization of an org-admin or member")
    p.add_argument("--project", action="append", default=[], metavar="P", help="a member's project (repeatable)")
    p.add_argument("--owner", default="", metavar="OWNER", help="a provider's fleet owner")
    p.add_argument("--posix-user", default="", metavar="ACCOUNT", help="the POSIX account the user's jobs run as")
    add_remote_args(p)
    p.set_defaults(handler=user_create)
    p = user.add_parser("set-posix", help="map a user to the POSIX account its jobs run as (operators, org-admins)")
    p.add_argument("name", metavar="USER")
    p.add_argument("account", metavar="ACCOUNT", help="an existing non-root account; '' removes the mapping")
    add_remote_args(p)
    p.set_defaults(handler=user_set_posix)

    org = command_group(sub, "org", "organizations")
    p = org.add_parser("create", help="create an organization (operators)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", required=True, metavar="K", help="university, institute, startup, enterprise, government")
    p.add_argument("--region", default="", metavar="R")
    p.add_argument("--flag", action="append", default=[], metavar="F", help="e.g. youth-startup (repeatable)")
    add_remote_args(p)
    p.set_defaults(handler=org_create)
    p = org.add_parser("list", help="organizations you can see")
    add_remote_args(p)
    p.set_defaults(handler=org_list)

    project = command_group(sub, "project", "projects")
    p = project.add_parser("create", help="create a project in an organization")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--organization", required=True, metavar="O")
    add_remote_args(p)
    p.set_defaults(handler=project_create)
    for parent, name in ((project, "list"), (sub, "projects")):
        p = parent.add_parser(name, help="projects you can see")
        add_remote_args(p)
        p.set_defaults(handler=project_list)

    p = sub.add_parser("whoami", help="who the token belongs to: name, role, organization, projects")
    add_remote_args(p)
    p.set_defaults(handler=whoami)

    p = sub.add_parser(
        "audit",
        help="the audit log (operators, org-admins); --verify checks its keyed hash chain; 'audit head' exports it",
    )
    p.add_argument("--verify", action="store_true", help="recompute the keyed hash chain (operators); exit 2 if broken")
    p.add_argument(
        "--against", type=Path, metavar="FILE", help="with --verify: also check the log against a head saved by "
        "'kfabric audit head' (detects truncation or rewriting after it)",
    )  # fmt: skip
    p.add_argument("--job", type=int, metavar="ID", help="only the entries about one job: why it ran where it did")
    p.add_argument("--action", metavar="ACTION", help="only entries of one action (e.g. job.admit, grant.topup)")
    add_remote_args(p)
    p.set_defaults(handler=audit)
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION")
    h = actions.add_parser("head", help="print the chain head as JSON, to keep outside the store (operators)")
    add_remote_args(h)
    h.set_defaults(handler=audit_head)
    r = actions.add_parser("rotate-key", help="add a new audit key to the key file (run on the server's host)")
    r.add_argument("--audit-key-file", type=Path, metavar="PATH",
                   help="the key file (default: $KFABRIC_AUDIT_KEY_FILE, else ./.kfabric/audit.key)")  # fmt: skip
    r.set_defaults(handler=audit_rotate_key)


def user_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        u = client.create_user(args.name, args.role, args.organization, args.project, args.owner, args.posix_user)
    if args.json:
        emit_json(u)
    else:
        print(f"Created user {u['name']} (id {u['id']}, role {u['role']}). Its API token, shown only now:")
        print(u["token"])
    return 0


def user_set_posix(args: argparse.Namespace) -> int:
    with connect(args) as client:
        u = client.set_posix_user(args.name, args.account)
    if args.json:
        emit_json(u)
    elif u["posix_user"]:
        print(f"User {u['name']}'s jobs run as POSIX account {u['posix_user']}")
    else:
        print(f"User {u['name']} has no POSIX account now: its jobs are refused until one is set")
    return 0


def org_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        o = client.create_organization(args.name, args.kind, args.region, args.flag)
    if args.json:
        emit_json(o)
    else:
        print(f"Created organization {o['name']} (id {o['id']}, {o['kind']})")
    return 0


def org_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.organizations()
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="Organizations")
    for name in ("ID", "name", "kind", "region", "flags"):
        table.add_column(name, justify="right" if name == "ID" else "left")
    for o in rows:
        table.add_row(str(o["id"]), Text(o["name"]), o["kind"], Text(o["region"]), Text(", ".join(o["flags"])))
    stdout_console().print(table)
    return 0


def project_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        p = client.create_project(args.name, args.organization)
    if args.json:
        emit_json(p)
    else:
        print(f"Created project {p['name']} (id {p['id']}) in organization {p['organization']}")
    return 0


def project_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.projects()
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="Projects")
    for name in ("ID", "project", "organization"):
        table.add_column(name, justify="right" if name == "ID" else "left")
    for p in rows:
        table.add_row(str(p["id"]), Text(p["name"]), Text(p["organization"]))
    stdout_console().print(table)
    return 0


def whoami(args: argparse.Namespace) -> int:
    with connect(args) as client:
        me = client.whoami()
    if args.json:
        emit_json(me)
        return 0
    print(f"{me['name']} ({me['role']})")
    if me.get("organization"):
        print(f"organization: {me['organization']}")
    if me.get("projects"):
        print(f"projects: {', '.join(me['projects'])}")
    return 0


def _read_head(path: Path) -> dict[str, Any]:
    try:
        head = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--against {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise UsageError(f"--against {path}: not JSON; save it with: kfabric audit head > {path}") from None
    ok = isinstance(head, dict) and isinstance(head.get("entries"), int) and isinstance(head.get("hash"), str)
    if not ok or head.get("format") != "kfabric-audit-head/1":
        raise UsageError(f"--against {path}: not an audit head; save one with: kfabric audit head > {path}")
    return cast(dict[str, Any], head)


def audit(args: argparse.Namespace) -> int:
    if args.against is not None and not args.verify:
        raise UsageError("--against needs --verify: kfabric audit --verify --against FILE")
    if args.verify and (args.job is not None or args.action):
        raise UsageError("--verify checks the whole chain: drop --job/--action")
    against = _read_head(args.against) if args.against is not None else None
    if against is not None and against["entries"] == 0:
        against = None  # an empty log's head anchors nothing
    with connect(args) as client:
        answer = client.audit_verify(against) if args.verify else client.audit(args.job, args.action)
    if args.json:
        emit_json(answer)
        return 0
    if isinstance(answer, dict):
        anchor = f"; matches the head exported with {against['entries']} entries" if against else ""
        print(f"audit chain intact: {answer['entries']} entries verified with keys "
              f"{', '.join(answer['keys']) or '-'}{anchor}")  # fmt: skip
        return 0
    table = Table(title="Audit log", caption=f"{len(answer)} entries")
    for name in ("ID", "at", "actor", "action", "object", "detail"):
        table.add_column(name, justify="right" if name == "ID" else "left", no_wrap=name in ("ID", "at"))
    for e in answer:
        detail = json.dumps(e["detail"], sort_keys=True) if e["detail"] else ""
        table.add_row(
            str(e["id"]), fmt_time(e["at_s"]), Text(e["actor"]), e["action"],
            Text(f"{e['object_type']} {e['object_id']}"), Text(detail),
        )  # fmt: skip
    stdout_console().print(table)
    return 0


def audit_head(args: argparse.Namespace) -> int:
    with connect(args) as client:
        emit_json(client.audit_head())
    return 0


def audit_rotate_key(args: argparse.Namespace) -> int:
    path = args.audit_key_file or Path(os.environ.get(ENV_KEY_FILE) or Path(".kfabric") / "audit.key")
    key_id = audit_keys.rotate(path)
    print(f"audit key {key_id} added to {path}: new entries are signed with it once the servers restart "
          "(older keys stay in the file to verify older entries)")  # fmt: skip
    return 0
