"""``kfabric fleet show SCENARIO [--at YYYY-MM-DD] [--json]``: what a fleet holds, by owner, site and model.
``kfabric fleet show --live [--json] [--url URL] [--token TOKEN]``: the running service's nodes by state, GPUs free,
allocated and out, and the nodes out of service with why (``GET /v1/fleet/live``), like Slurm's ``sinfo``."""

from __future__ import annotations

import argparse
import json
import re
from datetime import date
from typing import Any

from rich.console import Console
from rich.table import Table

from kfabric.backends.local import detect_gpus
from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import fmt_time
from kfabric.client import Client
from kfabric.scenarios.loader import Scenario, load_scenario, load_text
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.summary import FleetSummary, summarize, to_json

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="inspect a fleet scenario")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")

    def fleet_help(_args: argparse.Namespace) -> int:
        fleet.print_help()
        return 2

    fleet.set_defaults(handler=fleet_help)
    show = fleet_sub.add_parser(
        "show",
        help="GPUs, nodes and power by owner, site and model; --live: the running service's node states",
        description="Show what a scenario's fleet holds, optionally as of a date (pools online by then); with "
        "--live, what the running service's nodes are doing now (like sinfo).",
    )
    show.add_argument(
        "scenario",
        metavar="SCENARIO",
        nargs="?",
        help="packaged name (korea-2030, lab), local (this machine's GPUs, as `serve --fleet local` runs them), "
        "openb[:CSV], or a YAML path; with --live, the fleet the server must be running (checked)",
    )
    show.add_argument(
        "--local-gpus", type=int, metavar="N", help="with SCENARIO local: declare N GPUs (default: detected)"
    )
    show.add_argument("--at", metavar="YYYY-MM-DD", help="count only pools online on this date (default: all)")
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    # --- live: the running service (GET /v1/fleet/live) ---
    show.add_argument("--live", action="store_true", help="the running service's nodes by state and why they are out")
    show.add_argument("--url", help="with --live: server URL (default: $KFABRIC_URL, else http://127.0.0.1:8470)")
    show.add_argument("--token", help="with --live: API token (default: $KFABRIC_TOKEN, $KFABRIC_TOKEN_FILE, ...)")
    show.set_defaults(handler=show_cmd)


def parse_day(text: str, flag: str = "--at") -> date:
    """A calendar date in ``YYYY-MM-DD`` form, or a :class:`UsageError` naming ``flag``."""
    if _DATE.fullmatch(text.strip()):
        try:
            return date.fromisoformat(text.strip())
        except ValueError as exc:
            raise UsageError(f"{flag}: {text!r} is not a valid date ({exc}); use YYYY-MM-DD, e.g. 2027-01-01") from None
    raise UsageError(f"{flag}: expected a date YYYY-MM-DD (e.g. 2027-01-01), got {text!r}")


def show_cmd(args: argparse.Namespace) -> int:
    if args.live:
        return live_cmd(args)
    if args.scenario is None:
        raise UsageError("fleet show: name a SCENARIO (e.g. lab, korea-2030, a YAML path), or pass --live")
    if args.url is not None or args.token is not None:
        raise UsageError("fleet show: --url and --token go with --live (a SCENARIO is read here, not from a server)")
    at = parse_day(args.at) if args.at is not None else None
    summary = summarize(_scenario(args), at)
    if args.json:
        print(json.dumps(to_json(summary), indent=2))
    else:
        console = Console()
        # Piped output (files, tests) has no terminal width to respect: give the tables room instead of 80 columns.
        render(summary, console if console.is_terminal else Console(width=160))
    return 0


def _n(value: int) -> str:
    return f"{value:,}"


def _mw(value: float) -> str:
    """Megawatts with a precision that still shows a small lab fleet (0.054) and a large site (97.8)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}" if value >= 0.001 else f"{value:.1g}"


def _online(online: int, total: int) -> str:
    return _n(online) if online == total else f"{_n(online)} / {_n(total)}"


def render(summary: FleetSummary, console: Console) -> None:
    when = f"as of {summary.at.isoformat()}" if summary.at else "all phases"
    console.print(f"[bold]{summary.scenario}[/] — {when}", highlight=False)
    caption = "online / total where they differ" if summary.at else None

    owners = Table(title="By owner", caption=caption)
    owners.add_column("owner", no_wrap=True)
    owners.add_column("kind")
    owners.add_column("GPUs", justify="right")
    owners.add_column("nodes", justify="right")
    for o in summary.by_owner:
        owners.add_row(o.name, o.kind, _online(o.gpus_online, o.gpus_total), _n(o.nodes_online))
    console.print(owners)

    sites = Table(title="By site", caption="IT MW: nodes online x node power; facility MW = IT MW x PUE")
    sites.add_column("site", no_wrap=True)
    sites.add_column("region")
    sites.add_column("certification")
    sites.add_column("clearance")
    sites.add_column("GPUs", justify="right")
    sites.add_column("IT MW", justify="right")
    if summary.at is not None:
        sites.add_column("IT MW all phases", justify="right")
    sites.add_column("cap MW", justify="right")
    sites.add_column("PUE", justify="right")
    sites.add_column("facility MW", justify="right")
    for s in summary.by_site:
        full = [_mw(s.peak_it_mw_total)] if summary.at is not None else []
        sites.add_row(
            s.name,
            s.region,
            s.certification,
            s.clearance,
            _online(s.gpus_online, s.gpus_total),
            _mw(s.peak_it_mw),
            *full,
            f"{s.power_cap_mw:g}",
            f"{s.pue:.2f}",
            _mw(s.facility_mw),
        )
    console.print(sites)

    models = Table(title="By GPU model", caption=caption)
    models.add_column("model", no_wrap=True)
    models.add_column("interconnect")
    models.add_column("memory GB", justify="right")
    models.add_column("GPUs", justify="right")
    for m in summary.by_model:
        models.add_row(m.name, m.interconnect, f"{m.memory_gb:g}", _online(m.gpus_online, m.gpus_total))
    console.print(models)

    totals = Table(title="Totals", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    totals.add_row("GPUs online / total", f"{_n(summary.gpus_online)} / {_n(summary.gpus_total)}")
    totals.add_row("nodes online / total", f"{_n(summary.nodes_online)} / {_n(summary.nodes_total)}")
    totals.add_row("NVLink domains online", _n(summary.nvlink_domains_online))
    totals.add_row("pools online / total", f"{len(summary.pools_online)} / {len(summary.pools)}")
    totals.add_row("peak IT power (MW)", _mw(summary.peak_it_mw))
    totals.add_row("facility power at PUE (MW)", _mw(summary.facility_mw))
    totals.add_row("sum of site caps (MW)", f"{summary.power_cap_mw:g}")
    console.print(totals)


# ---- --live: the running service --------------------------------------------------------------------------------


def _scenario(args: argparse.Namespace) -> Scenario:
    """The named scenario; ``local`` is the one-node fleet of this machine's GPUs (``kfabric serve --fleet local``)."""
    if args.scenario != "local":
        if args.local_gpus is not None:
            raise UsageError("fleet show: --local-gpus goes with SCENARIO local")
        return load_scenario(args.scenario)
    gpus = args.local_gpus if args.local_gpus is not None else detect_gpus()
    if gpus < 1:
        raise UsageError(
            "fleet show local: no GPU detected (nvidia-smi); pass --local-gpus N, or --live to ask the running server"
        )
    return load_text(local_scenario_text(gpus), "local")


def live_cmd(args: argparse.Namespace) -> int:
    if args.at is not None or args.local_gpus is not None:
        raise UsageError("fleet show --live reads the running service: drop --at and --local-gpus")
    with Client.from_env(args.url, args.token) as client:
        data = client.fleet_live()
    if args.scenario is not None and args.scenario != data["name"]:
        raise UsageError(
            f"fleet show --live {args.scenario}: the server runs fleet {data['name']!r}; "
            f"run `kfabric fleet show --live` (or name {data['name']})"
        )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render_live(data, stdout_console())
    return 0


def _g(value: float) -> str:
    """GPUs: whole numbers as such, shares of GPUs with up to three decimals."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}".rstrip("0")


def render_live(data: dict[str, Any], console: Console) -> None:
    """Pools with their nodes by state and GPUs, then the nodes out of service (like ``sinfo`` and ``sinfo -R``)."""
    console.print(f"[bold]{data['name']}[/] — live at {fmt_time(data['at_s'])}", highlight=False)
    pools = Table(title="Pools", caption="nodes by state; GPUs free + allocated + out = total")
    for name in ("pool", "site", "owner", "model"):
        pools.add_column(name, no_wrap=True)
    for name in ("nodes", "idle", "mixed", "alloc", "drain", "down", "future", "GPUs", "free", "allocated", "out"):
        pools.add_column(name, justify="right")
    for p in data["pools"]:
        st = p["node_states"]
        pools.add_row(
            p["name"], p["site"], p["owner"], p["gpu_model"], _n(p["nodes"]),
            *(_n(st[k]) for k in ("idle", "mixed", "allocated", "drain", "down", "future")),
            _n(p["gpus"]), _g(p["gpus_free"]), _g(p["gpus_allocated"]), _g(p["gpus_out"]),
        )  # fmt: skip
    console.print(pools)
    out = data["out"]
    if not out:
        console.print("No node is out of service.")
        return
    nodes = Table(title="Nodes out of service")
    for name in ("node", "pool", "state", "since", "GPUs in use", "reason (source)"):
        nodes.add_column(name, justify="right" if name == "GPUs in use" else "left")
    for o in out:
        why = "; ".join(f"{r['reason'] or r['state']} ({r['source']})" for r in o["reasons"])
        nodes.add_row(o["node"], o["pool"], o["state"], fmt_time(o["since_s"]), _g(o["gpus_allocated"]), why)
    console.print(nodes)
