"""Tenancy and oversight: ``kfabric user create``, ``org create|list``, ``project create|list`` (also
``kfabric projects``), ``whoami`` and ``audit [--verify]``."""

from __future__ import annotations

import argparse
import json
from typing import TypeAlias

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, fmt_time

ROLES = ("operator", "reviewer", "org-admin", "member", "provider")
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _group(sub: Sub, name: str, help_text: str) -> Sub:
    parent = sub.add_parser(name, help=help_text)
    children = parent.add_subparsers(dest=f"{name}_command", metavar="ACTION")

    def usage(_args: argparse.Namespace) -> int:
        parent.print_help()
        return 2

    parent.set_defaults(handler=usage)
    return children


def register(sub: Sub) -> None:
    user = _group(sub, "user", "create users (their API token is shown once)")
    p = user.add_parser("create", help="create a user and print its API token once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, metavar="R", help=f"one of: {', '.join(ROLES)}")
    p.add_argument("--organization", metavar="O", help="the organization of an org-admin or member")
    p.add_argument("--project", action="append", default=[], metavar="P", help="a member's project (repeatable)")
    p.add_argument("--owner", default="", metavar="OWNER", help="a provider's fleet owner")
    add_remote_args(p)
    p.set_defaults(handler=user_create)

    org = _group(sub, "org", "organizations")
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

    project = _group(sub, "project", "projects")
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

    p = sub.add_parser("audit", help="the audit log (operators, org-admins); --verify checks its hash chain")
    p.add_argument("--verify", action="store_true", help="recompute the hash chain (operators); exit 2 if broken")
    add_remote_args(p)
    p.set_defaults(handler=audit)


def user_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        u = client.create_user(args.name, args.role, args.organization, args.project, args.owner)
    if args.json:
        emit_json(u)
    else:
        print(f"Created user {u['name']} (id {u['id']}, role {u['role']}). Its API token, shown only now:")
        print(u["token"])
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


def audit(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.audit_verify() if args.verify else client.audit()
    if args.json:
        emit_json(answer)
        return 0
    if isinstance(answer, dict):
        print(f"audit chain intact: {answer['entries']} entries verified")
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
