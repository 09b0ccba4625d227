"""Every hint names a command that exists (issue 15, hole 8: the 401 hint named `kfabric token create` before
there was one). Each ``kfabric <subcommand ...>`` in a string of ``src/kfabric/**/*.py`` (error ``fix`` texts,
CLI messages and help, and backticked commands in docstrings) is checked against the parser that
``kfabric.cli.main`` builds: its subcommand path must exist, and a backticked command's options must exist too."""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import kfabric
from kfabric.cli.main import build_parser

SRC = Path(kfabric.__file__).parent
#: ``kfabric`` followed by lowercase words, in a string that is not a docstring
MENTION = re.compile(r"(?<![\w.-])kfabric((?: [a-z][a-z0-9-]*)+)")
#: a whole command in backticks, anywhere (docstrings too): ``kfabric token create --user NAME``
BACKTICKED = re.compile(r"`kfabric ([^`\n]+)`")
#: words that follow "kfabric" in prose, where it is the product, not the command
PROSE = (
    "server",  # "the kfabric server at URL is not reachable"
    "serving",  # "kfabric serving fleet ..." (the serve banner)
    "simulation",  # "kfabric simulation report" (a page title)
    "audit keys:",  # the header line of the audit key file names the file, not a command
    # prose about what the product does or does not do ("kfabric keeps no mail address ...", "... is not used by
    # kfabric and was ignored"): verbs and words no subcommand is named after
    "keeps", "chooses", "requeues", "packs", "reserves", "tracks", "sends", "has no", "does not", "and was",
    "knows", "supports", "assigns", "command", "portal", "shows",
)  # fmt: skip
#: a word that could be a subcommand (not a placeholder such as ID, FILE, job.sh, ...)
WORD = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Mention:
    where: str  # file:line
    words: tuple[str, ...]  # after "kfabric"
    backticked: bool  # the whole command (options included) is known
    after: str = ""  # the text after "kfabric " (to recognize prose)

    @property
    def text(self) -> str:
        return " ".join(("kfabric", *self.words))


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def mentions_in(text: str, where: str, docstring: bool) -> list[Mention]:
    found = [Mention(where, tuple(m.group(1).split()), True) for m in BACKTICKED.finditer(text)]
    if not docstring:  # prose in docstrings says "kfabric decides ..."; only its backticked commands count
        backticked = {m.start() for m in BACKTICKED.finditer(text)}
        found += [
            Mention(where, tuple(m.group(1).split()), False, text[m.start(1) + 1 : m.start(1) + 80])
            for m in MENTION.finditer(text)
            if m.start() - 1 not in backticked
        ]
    return found


def mentions_in_source(path: Path) -> list[Mention]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    out: list[Mention] = []
    for node in ast.walk(tree):  # f-strings: their literal parts are constants too
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
            out += mentions_in(node.value, where, id(node) in docs)
    return out


def all_mentions() -> list[Mention]:
    return [m for path in sorted(SRC.rglob("*.py")) for m in mentions_in_source(path)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positionals(parser: argparse.ArgumentParser) -> int:
    return sum(1 for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction))


def _check_rest(parser: argparse.ArgumentParser, path: str, rest: tuple[str, ...]) -> str | None:
    """Options and arguments of a backticked command after its subcommand path."""
    takes_value = False
    for word in rest:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            action = parser._option_string_actions.get(option)
            if action is None:
                return f"`{path}` has no option {option}"
            takes_value = action.nargs != 0 and "=" not in word
        elif takes_value:
            takes_value = False
        elif not WORD.fullmatch(word):
            continue  # a placeholder or a value: ID, FILE, job.sh, ...
        elif _subcommands(parser):
            return f"`{path}` has no subcommand {word!r} (it has: {', '.join(_subcommands(parser))})"
        elif not _positionals(parser):
            return f"`{path}` takes no argument, and has no subcommand {word!r}"
    return None


def problem(root: argparse.ArgumentParser, mention: Mention) -> str | None:
    """Why ``mention`` names no real command, or None."""
    if not mention.backticked and mention.after.startswith(PROSE):
        return None
    parser, path = root, "kfabric"
    for i, word in enumerate(mention.words):
        subs = _subcommands(parser)
        if word in subs:
            parser, path = subs[word], f"{path} {word}"
            continue
        if not mention.backticked and not subs:
            return None  # a leaf command, then prose: "kfabric queue lists job ids"
        if not mention.backticked or i == 0:
            return f"`{path}` has no subcommand {word!r}" + (f" (it has: {', '.join(subs)})" if subs else "")
        return _check_rest(parser, path, mention.words[i:])
    return None


PARSER = build_parser()
MENTIONS = all_mentions()


@pytest.mark.parametrize("mention", MENTIONS, ids=[f"{m.where}:{m.text}" for m in MENTIONS])
def test_every_hint_names_a_command_that_exists(mention: Mention) -> None:
    assert problem(PARSER, mention) is None, f"{mention.where}: {mention.text!r}: {problem(PARSER, mention)}"


def test_the_hints_this_issue_is_about_are_found() -> None:
    texts = {m.text for m in MENTIONS}
    assert {"kfabric token create", "kfabric user create"} <= texts
    assert any(m.where.startswith("kfabric/service/auth.py") and m.words[:2] == ("token", "create") for m in MENTIONS)


BAD = [  # (a string in the source, is it a docstring, the problem the checker must report)
    ("fix: run kfabric tokn create", False, "has no subcommand 'tokn'"),
    ("fix: kfabric token make", False, "`kfabric token` has no subcommand 'make'"),
    ("see `kfabric token create --forever`", True, "has no option --forever"),
    ("see `kfabric whoami head`", True, "takes no argument"),
    ("use `kfabric job frobnicate 3`", True, "has no subcommand 'frobnicate'"),
    ("`kfabric nosuch`", True, "has no subcommand 'nosuch'"),
]
GOOD = [
    ("ask an operator: `kfabric token create --user YOUR_NAME`", False),
    ("(kfabric queue lists job ids)", False),
    ("kfabric token revoke ID, then kfabric token list --all", False),
    ("the kfabric server at http://x is not reachable", False),
    ("`kfabric audit`", True),
    ("kfabric decides placement", True),  # docstring prose, not a command
    ("kfabric.cli.main and kfabric's parser", False),
]


@pytest.mark.parametrize(("text", "docstring", "expected"), BAD)
def test_the_checker_catches_hints_that_name_no_command(text: str, docstring: bool, expected: str) -> None:
    found = [p for m in mentions_in(text, "planted", docstring) if (p := problem(PARSER, m))]
    assert found and expected in found[0], found


@pytest.mark.parametrize(("text", "docstring"), GOOD)
def test_the_checker_accepts_real_commands_and_prose(text: str, docstring: bool) -> None:
    assert [p for m in mentions_in(text, "planted", docstring) if (p := problem(PARSER, m))] == []
