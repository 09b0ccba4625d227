"""The ``kfabric`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from kfabric import native
from kfabric.cli.errors import UsageError
from kfabric.model.errors import KfabricError
from kfabric.model.suggest import closest_name, did_you_mean

Handler = Callable[[argparse.Namespace], int]
__all__ = ["UsageError", "build_parser", "main"]


#: the command modules, in the order their commands are listed; each adds its parser and sets ``handler``
#: (some extend another's command: fleet_admin_cmd adds `fleet apply`, `node`, `policy`; credit_cmd adds
#: `grant topup`; webhook_cmd adds `project webhook-secret`)
MODULES = (
    "fleet_cmd", "fleet_admin_cmd", "simulate_cmd", "sweep_cmd", "report_cmd", "bench_cmd", "serve_cmd",
    "submit_cmd", "queue_cmd", "acct_cmd", "cancel_cmd", "job_control_cmd", "job_cmd", "usage_cmd", "programs_cmd",
    "credit_cmd", "admin_cmd", "webhook_cmd", "slurm_cmd", "token_cmd", "backup_cmd", "status_cmd",
)  # fmt: skip
#: commands a user types many times a minute, and the one module that defines each whole: for these only that
#: module is imported (``kfabric queue`` starts in 0.2 s instead of 1.2 s for every module, measured with
#: ``python -X importtime``: serve, bench, backup and the API schemas dominate)
FAST = {
    "queue": "queue_cmd", "acct": "acct_cmd", "cancel": "cancel_cmd", "job": "job_cmd", "submit": "submit_cmd",
    "hold": "job_control_cmd", "release": "job_control_cmd", "requeue": "job_control_cmd",
    "update": "job_control_cmd",
}  # fmt: skip


class Subparsers(Protocol):
    """What a command module's ``register(sub)`` gets: the object ``add_subparsers`` returns (argparse does not
    name its type publicly). ``choices`` maps each command name to its parser."""

    choices: Any

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def _register_all(sub: Subparsers, only: str | None = None) -> None:
    for name in (FAST[only],) if only in FAST else MODULES:
        importlib.import_module(f"kfabric.cli.{name}").register(sub)


def subcommands(parser: argparse.ArgumentParser) -> Subparsers:
    """The subcommands of a command's parser made by another module (``fleet`` gets ``fleet apply`` from
    fleet_admin_cmd): the object its ``add_subparsers`` returned."""
    found: Subparsers | None = getattr(parser, "subcommands", None)
    if found is None:
        raise LookupError(f"{parser.prog} has no subcommands (register the module that adds them first)")
    return found


#: the option lines of a help text (``  -o FIELDS, --format FIELDS   columns, ...``): what names the options
_OPTION_LINE = re.compile(r"^ {2}(-[^ ].*?)(?: {2,}|$)", re.MULTILINE)
_LONG_OPTION = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")


class SuggestingParser(argparse.ArgumentParser):
    """argparse's parser, whose errors add "did you mean ...?" for a mistyped subcommand, choice or option
    (``queu`` for ``queue``, ``--formt``). Subparsers are made of the same class; each keeps the object its
    ``add_subparsers`` returned as ``subcommands``."""

    subcommands: Subparsers | None = None

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.subcommands = super().add_subparsers(**kwargs)
        return self.subcommands

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
    """Every long option of ``parser`` and its subcommands (an unknown option is reported by the top parser), as
    their help lists them (options hidden from the help are not suggested)."""
    out = {o for line in _OPTION_LINE.findall(parser.format_help()) for o in _LONG_OPTION.findall(line)}
    sub = getattr(parser, "subcommands", None)
    if sub is not None:
        for child in {id(p): p for p in sub.choices.values()}.values():
            out |= _option_strings(child)
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given a ``command`` of :data:`FAST`, a parser with that command only (the rest is not
    imported)."""
    parser = SuggestingParser(
        prog="kfabric",
        description="Control plane for a national AI compute fabric.",
    )
    _register_all(parser.add_subparsers(dest="command", metavar="COMMAND"), command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        native.raise_deferred()  # a KFABRIC_NATIVE setting that cannot be honoured (kfabric.native.guard)
    except native.NativeBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(argv[0] if argv and argv[0] in FAST else None)
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
