"""The ``kfabric`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from kfabric.cli import (
    acct_cmd,
    admin_cmd,
    backup_cmd,
    bench_cmd,
    cancel_cmd,
    credit_cmd,
    fleet_admin_cmd,
    fleet_cmd,
    job_cmd,
    job_control_cmd,
    programs_cmd,
    queue_cmd,
    report_cmd,
    serve_cmd,
    simulate_cmd,
    slurm_cmd,
    status_cmd,
    submit_cmd,
    sweep_cmd,
    token_cmd,
    usage_cmd,
    webhook_cmd,
)
from kfabric.cli.errors import UsageError
from kfabric.model.errors import KfabricError
from kfabric.model.suggest import closest_name, did_you_mean

Handler = Callable[[argparse.Namespace], int]
__all__ = ["UsageError", "build_parser", "main"]


def _register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # One line per command module; each adds its parser and sets ``handler``.
    fleet_cmd.register(sub)
    fleet_admin_cmd.register(sub)  # adds `fleet apply` to fleet_cmd's `fleet`; `node`, `policy`
    simulate_cmd.register(sub)
    sweep_cmd.register(sub)  # variants x policies x seeds, locally or on Ray
    report_cmd.register(sub)
    bench_cmd.register(sub)
    serve_cmd.register(sub)
    submit_cmd.register(sub)
    queue_cmd.register(sub)
    acct_cmd.register(sub)  # sacct-like per-job accounting
    cancel_cmd.register(sub)
    job_control_cmd.register(sub)  # hold, release, requeue, update
    job_cmd.register(sub)
    usage_cmd.register(sub)
    programs_cmd.register(sub)
    credit_cmd.register(sub)  # adds `grant topup` to programs_cmd's `grant`
    admin_cmd.register(sub)
    webhook_cmd.register(sub)  # adds `project webhook-secret` to admin_cmd's `project`
    slurm_cmd.register(sub)
    token_cmd.register(sub)
    backup_cmd.register(sub)
    status_cmd.register(sub)


class SuggestingParser(argparse.ArgumentParser):
    """argparse's parser, whose errors add "did you mean ...?" for a mistyped subcommand, choice or option
    (``queu`` for ``queue``, ``--formt``). Subparsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice is not None:
            choices = [c.strip(" '") for c in choice.group(2).split(",")]
            message += did_you_mean(choice.group(1), choices).replace(" (", "; ", 1).rstrip(")")
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown is not None:
            options = sorted(_option_strings(self))
            typed = [a.split("=")[0] for a in unknown.group(1).split() if a.startswith("-")]
            hints = [f"{a}: did you mean {h}?" for a in typed for h in [closest_name(a, options)] if h not in (None, a)]
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and its subcommands (an unknown option is reported by the top parser)."""
    out = {o for o in parser._option_string_actions if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                out |= _option_strings(sub)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="kfabric",
        description="Control plane for a national AI compute fabric.",
    )
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", metavar="COMMAND"
    )
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
