"""Operating the running service: ``kfabric fleet apply FILE [--dry-run] [--running finish|requeue]``,
``kfabric node drain NODE --reason TEXT [--requeue]``, ``node resume NODE``, ``node list``, ``kfabric policy apply
FILE|PRESET`` and ``policy show``. All talk to the service (operators); changes take effect at the controller's
next cycle, without a restart.

``fleet apply`` is added to the ``fleet`` command that ``fleet_cmd`` makes, so this module registers after it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeAlias

from kfabric.cli.admin_cmd import command_group
from kfabric.cli.errors import UsageError
from kfabric.cli.main import Subparsers, subcommands
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, fmt_time
from kfabric.scenarios.loader import PACKAGED, scenario_text
from kfabric.sched.presets import PRESETS

Sub: TypeAlias = "Subparsers"
_MARK = {"added": "+", "removed": "-"}


def register(sub: Sub) -> None:
    fleet = sub.choices["fleet"]
    fleet_sub = subcommands(fleet)
    p = fleet_sub.add_parser(
        "apply",
        help="change the running service's fleet (operators; audited; in effect at the next cycle)",
        description="Compare a fleet document (the scenario YAML schema) with the service's fleet, print the "
        "difference and apply it in one audited change; the next scheduling cycle uses it, without a restart. "
        "Nodes that leave while work runs on them drain: no new work; that work finishes or is requeued "
        "(--running). Refused whole when invalid.",
    )
    p.add_argument("file", metavar="FILE", help=f"a scenario YAML file, or a packaged one ({', '.join(PACKAGED)})")
    p.add_argument("--dry-run", action="store_true", help="print the difference and change nothing")
    p.add_argument(
        "--running",
        choices=("finish", "requeue"),
        help="work on nodes that leave (or on pools whose GPUs change): finish (runs to its end, the nodes leave "
        "then) or requeue (stopped, queued again); needed when such work runs",
    )
    add_remote_args(p)
    p.set_defaults(handler=fleet_apply_cmd)

    node = command_group(sub, "node", "take nodes of the running service out of service and back (operators)")
    p = node.add_parser("drain", help="no new work on NODE; running work goes on (unless --requeue); audited")
    p.add_argument("node", metavar="NODE", help="the node's name (kfabric fleet show --live lists them)")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (shown on the node; audited)")
    p.add_argument("--requeue", action="store_true", help="also stop the work running on it and queue it again")
    add_remote_args(p)
    p.set_defaults(handler=drain_cmd)
    p = node.add_parser("resume", help="put a drained NODE back in service; audited")
    p.add_argument("node", metavar="NODE", help="the node's name")
    add_remote_args(p)
    p.set_defaults(handler=resume_cmd)
    p = node.add_parser("list", help="nodes out of service, with why, who and the jobs still on them")
    add_remote_args(p)
    p.set_defaults(handler=list_cmd)

    policy = command_group(sub, "policy", "the live scheduling policy: apply a new one, show the one in use")
    p = policy.add_parser("apply", help="validate a policy and make it live at the next cycle (operators; audited)")
    p.add_argument("file", metavar="FILE|PRESET", help=f"a policy YAML file, or a preset ({', '.join(PRESETS)})")
    add_remote_args(p)
    p.set_defaults(handler=policy_apply_cmd)
    p = policy.add_parser("show", help="the policy the controller schedules with now")
    add_remote_args(p)
    p.set_defaults(handler=policy_show_cmd)


# ---- fleet apply -----------------------------------------------------------------------------------------------
def _document(name: str) -> str:
    if name in PACKAGED:
        return scenario_text(name)
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"FILE: {name!r} is neither a file nor a packaged scenario ({', '.join(PACKAGED)})")
    return path.read_text()


def fleet_apply_cmd(args: argparse.Namespace) -> int:
    document = _document(args.file)
    with connect(args) as client:
        change = client.fleet_apply(document, args.running, args.dry_run)
    if args.json:
        emit_json(change)
        return 0
    for line in describe_change(change):
        print(line)
    return 0


def describe_change(change: dict[str, Any]) -> list[str]:
    """The difference and what happens to the work, as ``fleet apply`` prints it."""
    if change["unchanged"]:
        return [f"Fleet {change['name']}: no change (the document matches the service's fleet)."]
    lines = [f"Fleet {change['name']}: changes" + (" (dry run: nothing changed)" if change["dry_run"] else "")]
    for section, diff in change["diff"].items():
        entries = [f"{_MARK[kind]} {name}" for kind in ("added", "removed") for name in diff[kind]]
        entries += [
            f"~ {name}: " + "; ".join(f"{field} {old} -> {new}" for field, (old, new) in fields.items())
            for name, fields in diff["changed"].items()
        ]
        for i, entry in enumerate(entries):
            lines.append(f"  {section if i == 0 else '':<11} {entry}")
    for key, what in (("requeue", "requeued"), ("withdraw", "placement withdrawn, queued again"),
                      ("finishing", "run to their end on draining nodes")):  # fmt: skip
        if change[key]:
            lines.append(f"  jobs {', '.join(str(j) for j in change[key])}: {what}")
    for pool, nodes in change["draining"].items():
        lines.append(f"  pool {pool}: {', '.join(nodes)} drain and leave the fleet once their work ends")
    if change["source_id"] is not None:
        lines.append(f"Stored as fleet change #{change['source_id']}; in effect at the controller's next cycle.")
    return lines


# ---- nodes -----------------------------------------------------------------------------------------------------
def drain_cmd(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise UsageError("--reason: say why the node is drained (it is shown on the node and kept in the audit log)")
    with connect(args) as client:
        view = client.drain_node(args.node, args.reason, args.requeue)
    if args.json:
        emit_json(view)
        return 0
    jobs = ", ".join(str(j) for j in view["jobs"])
    still = f"; jobs still running there: {jobs}" if jobs else ""
    print(f"Node {view['node']} (pool {view['pool']}) drained: {view['reason']}{still}")
    return 0


def resume_cmd(args: argparse.Namespace) -> int:
    with connect(args) as client:
        view = client.resume_node(args.node)
    if args.json:
        emit_json(view)
        return 0
    if view["state"] == "up":
        print(f"Node {view['node']} (pool {view['pool']}) back in service")
    else:
        print(f"Node {view['node']}: the operator's drain is lifted, but it stays out: {view['reason']}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    with connect(args) as client:
        nodes = client.nodes()
    if args.json:
        emit_json(nodes)
        return 0
    if not nodes:
        print("Every node is in service.")
        return 0
    print(f"{'NODE':<20} {'POOL':<14} {'STATE':<6} {'SOURCE':<10} {'SINCE':<20} {'BY':<12} {'JOBS':<10} REASON")
    for n in nodes:
        jobs = ",".join(str(j) for j in n["jobs"]) or "-"
        print(
            f"{n['node']:<20} {n['pool']:<14} {n['state']:<6} {n['source']:<10} {fmt_time(n['since_s']):<20} "
            f"{n['by'] or '-':<12} {jobs:<10} {n['reason']}"
        )
    return 0


# ---- policy ----------------------------------------------------------------------------------------------------
def policy_apply_cmd(args: argparse.Namespace) -> int:
    if args.file in PRESETS:
        document, name = args.file, args.file
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"FILE|PRESET: {args.file!r} is neither a file nor a preset ({', '.join(PRESETS)})")
        document, name = path.read_text(), path.stem
    with connect(args) as client:
        answer = client.policy_apply(document, name)
    if args.json:
        emit_json(answer)
        return 0
    stored = answer["stored"]
    print(f"Policy {answer['policy']['name']!r} stored as #{stored['id']}; in effect at the controller's next cycle.")
    return 0


def policy_show_cmd(args: argparse.Namespace) -> int:
    with connect(args) as client:
        answer = client.policy()
    if args.json:
        emit_json(answer)
        return 0
    print(f"Live policy {answer['policy']['name']!r} (from {answer['source']})")
    for key, value in answer["policy"].items():
        print(f"  {key:<26} {value}")
    if answer["pending"]:
        print(f"Stored policy #{answer['stored']['id']} takes effect at the next cycle.")
    return 0
