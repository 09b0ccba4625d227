"""``kfabric bench ...``: the benchmark commands (their JSON keys are contracts)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and print its figures")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench.set_defaults(handler=lambda _a: (bench.print_help(), 2)[1])
    del bench_sub
