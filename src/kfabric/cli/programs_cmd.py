"""The program lifecycle from the command line: ``kfabric programs``, ``apply``, ``applications``, ``review``,
``grant decide`` and ``grant list`` (product spec section 3)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

from rich.table import Table
from rich.text import Text

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, fmt_time, parse_id

STATUSES = ("submitted", "approved", "rejected")
if TYPE_CHECKING:
    from kfabric.cli.main import Subparsers

Sub: TypeAlias = "Subparsers"


def register(sub: Sub) -> None:
    p = sub.add_parser("programs", help="the programs that grant GPU time, with their rules")
    add_remote_args(p)
    p.set_defaults(handler=programs_cmd)

    p = sub.add_parser("apply", help="apply to a program for GPUs (org-admins, operators)")
    p.add_argument("--program", required=True, metavar="P", help="program name (kfabric programs lists them)")
    p.add_argument("--project", required=True, metavar="X", help="the project that would hold the grant")
    p.add_argument("--gpu-model-class", required=True, metavar="MODEL", help="GPU model asked for, e.g. B200")
    p.add_argument("--gpus", required=True, metavar="N", help="GPUs asked for")
    p.add_argument("--months", required=True, metavar="M", help="grant length in months of 30 days")
    p.add_argument("--justification", default="", metavar="TEXT", help="why the project needs them")
    add_remote_args(p)
    p.set_defaults(handler=apply_cmd)

    p = sub.add_parser("applications", help="applications you can see")
    p.add_argument("--status", metavar="S", help=f"only applications in this status: {', '.join(STATUSES)}")
    add_remote_args(p)
    p.set_defaults(handler=applications_cmd)

    p = sub.add_parser("review", help="score an application on its program's criteria (reviewers)")
    p.add_argument("application_id", metavar="APPLICATION_ID")
    p.add_argument("--score", action="append", required=True, metavar="CRITERION=N", help="0..10 (repeatable)")
    p.add_argument("--comment", default="", metavar="TEXT")
    add_remote_args(p)
    p.set_defaults(handler=review_cmd)

    grant = sub.add_parser("grant", help="decide applications and list grants")
    grant_sub = grant.add_subparsers(dest="grant_command", metavar="ACTION")

    def grant_help(_args: argparse.Namespace) -> int:
        grant.print_help()
        return 2

    grant.set_defaults(handler=grant_help)
    p = grant_sub.add_parser("decide", help="approve or reject an application (operators)")
    p.add_argument("application_id", metavar="APPLICATION_ID")
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true", help="approve: issue grant g-APPLICATION_ID")
    choice.add_argument("--reject", action="store_true", help="reject")
    p.add_argument(
        "--credit",
        metavar="SU_HOURS",
        help="service-unit hours to credit (none unless given; needed with --no-reserve)",
    )
    p.add_argument("--no-reserve", action="store_true", help="grant credit only, reserve no GPUs")
    p.add_argument("--note", default="", metavar="TEXT", help="the decision's note to the applicant")
    add_remote_args(p)
    p.set_defaults(handler=decide_cmd)
    p = grant_sub.add_parser("list", help="grants you can see, with credit used and left")
    add_remote_args(p)
    p.set_defaults(handler=grants_cmd)


def _positive_int(text: str, flag: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"{flag}: expected a whole number >= 1, got {text!r}")
    return int(text)


def parse_scores(items: list[str]) -> dict[str, float]:
    """``--score impact=8`` items as a mapping; each 0..10."""
    scores: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value) if sep and name.strip() else -1.0
        except ValueError:
            number = -1.0
        if not 0 <= number <= 10:
            raise UsageError(f"--score: expected CRITERION=N with N in 0..10 (e.g. --score impact=8), got {item!r}")
        scores[name.strip()] = number
    return scores


def programs_cmd(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.programs()
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="Programs")
    for name in ("program", "owner", "weight", "eligible", "review criteria", "max days", "description"):
        table.add_column(name, justify="right" if name in ("weight", "max days") else "left")
    for p in rows:
        rules = p["rules"]
        criteria = ", ".join(f"{k} x{w:g}" for k, w in rules.get("review_weights", {}).items())
        table.add_row(
            Text(p["name"]), Text(p["owner"]), f"{p['weight']:g}", ", ".join(rules.get("eligible_kinds", [])),
            criteria, str(rules.get("max_duration_days", "")), Text(p["description"]),
        )  # fmt: skip
    stdout_console().print(table)
    return 0


def apply_cmd(args: argparse.Namespace) -> int:
    gpus, months = _positive_int(args.gpus, "--gpus"), _positive_int(args.months, "--months")
    with connect(args) as client:
        a = client.apply(args.program, args.project, args.gpu_model_class, gpus, months, args.justification)
    if args.json:
        emit_json(a)
    else:
        print(f"Submitted application {a['id']}: {a['gpus']} x {a['gpu_model_class']} for {a['months']} months "
              f"to program {a['program']} for project {a['project']}")  # fmt: skip
    return 0


def applications_cmd(args: argparse.Namespace) -> int:
    if args.status is not None and args.status not in STATUSES:
        raise UsageError(f"--status: unknown status {args.status!r}; use one of: {', '.join(STATUSES)}")
    with connect(args) as client:
        rows = client.applications(args.status)
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="Applications", caption=f"{len(rows)} shown")
    for name in ("ID", "program", "organization", "project", "asks", "status", "reviews", "mean score", "created"):
        table.add_column(name, justify="right" if name in ("ID", "reviews", "mean score") else "left")
    for a in rows:
        mean = a.get("mean_score")
        table.add_row(
            str(a["id"]), Text(str(a["program"])), Text(str(a["organization"])), Text(str(a["project"])),
            f"{a['gpus']} x {a['gpu_model_class']}, {a['months']} mo", a["status"], str(len(a["reviews"])),
            "-" if mean is None else f"{mean:.2f}", fmt_time(a["created_at_s"]),
        )  # fmt: skip
    stdout_console().print(table)
    return 0


def review_cmd(args: argparse.Namespace) -> int:
    application_id = parse_id(args.application_id, "APPLICATION_ID")
    scores = parse_scores(args.score)
    with connect(args) as client:
        r = client.review(application_id, scores, args.comment)
    if args.json:
        emit_json(r)
    else:
        print(f"Reviewed application {application_id}: weighted score {r['weighted']:.2f}")
    return 0


def decide_cmd(args: argparse.Namespace) -> int:
    application_id = parse_id(args.application_id, "APPLICATION_ID")
    credit = _credit(args.credit)
    if args.approve and args.no_reserve and credit == 0:
        raise UsageError("--no-reserve reserves no GPUs, so the grant needs credit: pass --credit SU_HOURS")
    with connect(args) as client:
        d = client.decide(application_id, args.approve, args.note, reserved=not args.no_reserve, credit_su_hours=credit)
    if args.json:
        emit_json(d)
        return 0
    g = d.get("grant")
    if not d["approved"] or g is None:
        print(f"Rejected application {application_id}")
        return 0
    reserved = f"{g['reserved']['gpus']} x {g['reserved']['model']} reserved" if g["reserved"] else "nothing reserved"
    print(f"Approved application {application_id}: grant {g['name']}, "
          f"{g['start']} .. {g['end']}, {reserved}, {g['credit_su_hours']:,.0f} SU-hours credit")  # fmt: skip
    return 0


def _credit(text: str | None) -> float:
    """``--credit`` as service-unit hours (0 when not given)."""
    if text is None:
        return 0.0
    try:
        credit = float(text)
    except ValueError:
        credit = -1.0
    if not 0 <= credit <= 1e12:
        raise UsageError(f"--credit: expected service-unit hours >= 0 (e.g. 50000), got {text!r}")
    return credit


def grants_cmd(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = client.grants()
    if args.json:
        emit_json(rows)
        return 0
    table = Table(
        title="Grants",
        caption="credit in SU-hours; held: for the time limits of running jobs; free: what new jobs may use",
    )
    for name in ("grant", "program", "project", "start", "end", "reserved", "credit", "used", "held", "free", "status"):
        table.add_column(name, justify="right" if name in ("credit", "used", "held", "free") else "left")
    for g in rows:
        reserved = f"{g['reserved']['gpus']} x {g['reserved']['model']}" if g["reserved"] else "-"
        table.add_row(
            Text(g["name"]), Text(g["program"]), Text(g["project"]), g["start"], g["end"], reserved,
            *(f"{g[k]:,.1f}" for k in ("credit_su_hours", "used_su_hours", "held_su_hours", "free_su_hours")),
            g["status"],
        )  # fmt: skip
    stdout_console().print(table)
    return 0
