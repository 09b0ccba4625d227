"""``kfabric slurm discover CONFIG``: read Slurm clusters and print the fleet fragment (clusters + pools with
their node names) to merge into a scenario file, so kfabric places work on the real nodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kfabric.backends.slurm.config import load_slurm_clusters_file
from kfabric.backends.slurm.discover import discover
from kfabric.cli.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("slurm", help="connect Slurm clusters (discover their nodes and GPUs)")
    inner = p.add_subparsers(dest="slurm_command", metavar="COMMAND", required=True)
    d = inner.add_parser("discover", help="print the fleet fragment (clusters, pools, node names) of Slurm clusters")
    d.add_argument("config", type=Path, help="YAML with a slurm_clusters list (docs/slurm.md)")
    d.add_argument("--cluster", help="only this cluster of the config")
    d.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    d.set_defaults(handler=run_discover)


def run_discover(args: argparse.Namespace) -> int:
    configs = load_slurm_clusters_file(args.config)
    if args.cluster:
        configs = [c for c in configs if c.name == args.cluster]
        if not configs:
            raise UsageError(f"--cluster {args.cluster!r}: not in {args.config}")
    found = [discover(c) for c in configs]
    if args.json:
        print(json.dumps([d.fragment() for d in found], indent=2))
        return 0
    for d in found:
        print(d.fragment_yaml())
        for node, why in sorted(d.skipped.items()):
            print(f"# skipped {node}: {why}")
        for warning in d.warnings:
            print(f"# warning: {warning}")
    return 0
