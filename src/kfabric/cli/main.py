"""The ``kfabric`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

from kfabric.model.errors import KfabricError

Handler = Callable[[argparse.Namespace], int]


class UsageError(KfabricError):
    """A command-line argument is wrong; the message says which and how to fix it."""


def _register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # One line per command module; each adds its parser and sets ``handler``.
    from kfabric.cli import bench_cmd, fleet_cmd

    fleet_cmd.register(sub)
    bench_cmd.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfabric",
        description="Control plane for a national AI compute fabric.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    err = Console(stderr=True)
    try:
        return handler(args)
    except (KfabricError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
