"""The ``kfabric`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from kfabric.cli import (
    admin_cmd,
    backup_cmd,
    bench_cmd,
    cancel_cmd,
    credit_cmd,
    fleet_admin_cmd,
    fleet_cmd,
    job_cmd,
    programs_cmd,
    queue_cmd,
    report_cmd,
    serve_cmd,
    simulate_cmd,
    slurm_cmd,
    status_cmd,
    submit_cmd,
    token_cmd,
    usage_cmd,
)
from kfabric.cli.errors import UsageError
from kfabric.model.errors import KfabricError

Handler = Callable[[argparse.Namespace], int]
__all__ = ["UsageError", "build_parser", "main"]


def _register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # One line per command module; each adds its parser and sets ``handler``.
    fleet_cmd.register(sub)
    fleet_admin_cmd.register(sub)  # adds `fleet apply` to fleet_cmd's `fleet`; `node`, `policy`
    simulate_cmd.register(sub)
    report_cmd.register(sub)
    bench_cmd.register(sub)
    serve_cmd.register(sub)
    submit_cmd.register(sub)
    queue_cmd.register(sub)
    cancel_cmd.register(sub)
    job_cmd.register(sub)
    usage_cmd.register(sub)
    programs_cmd.register(sub)
    credit_cmd.register(sub)  # adds `grant topup` to programs_cmd's `grant`
    admin_cmd.register(sub)
    slurm_cmd.register(sub)
    token_cmd.register(sub)
    backup_cmd.register(sub)
    status_cmd.register(sub)


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
    try:
        return handler(args)
    except (KfabricError, ValueError) as exc:
        # plain text, never wrapped: error lines name files and keys that must stay copyable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a file or socket the command needs: the OS's own words name it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
