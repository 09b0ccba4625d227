"""YAML read with line numbers: every value knows its key path and line, so errors can point at them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from kfabric.scenarios.errors import ScenarioError


@dataclass
class Doc:
    """A parsed YAML document plus the line of each key path (``pools[3].nodes`` -> 57)."""

    file: str
    data: Any
    lines: dict[str, int]

    def error(self, path: str, expected: str, found: object) -> ScenarioError:
        return ScenarioError(self.file, path, self.line(path), expected, show_value(found))

    def line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("")


def read_doc(path: Path, label: str | None = None) -> Doc:
    file = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(file, "", None, "an existing YAML file", "no such file") from None
    except OSError as exc:
        raise ScenarioError(file, "", None, "a readable YAML file", str(exc)) from None
    return parse_doc(text, file)


def parse_doc(text: str, file: str) -> Doc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(file, "", line, "valid YAML", str(problem)) from None
    if node is None:
        raise ScenarioError(file, "", 1, "a YAML mapping", "an empty file")
    lines: dict[str, int] = {}
    data = _convert(node, "", lines, file)
    return Doc(file, data, lines)


def _convert(node: yaml.Node, path: str, lines: dict[str, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                raise ScenarioError(file, _join(path, key), key_node.start_mark.line + 1, "unique keys", "a duplicate")
            out[key] = _convert(value_node, _join(path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, f"{path}[{i}]", lines, file) for i, v in enumerate(node.value)]
    try:
        return _SCALARS.construct_object(node)
    except (ValueError, yaml.YAMLError) as exc:  # e.g. a timestamp-shaped scalar that is no real date: 2025-13-01
        expected = "a valid date YYYY-MM-DD" if node.tag.endswith(":timestamp") else "a valid YAML value"
        detail = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(file, path, node.start_mark.line + 1, expected, f"{node.value!r} ({detail})") from None


_SCALARS = yaml.SafeLoader("")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show_value(value: object) -> str:
    """How a found value is named in an error (``number 3``, ``text 'x'``, ``a list``)."""
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, date):
        return f"date {value.isoformat()}"
    if value is None:
        return "nothing (null or missing)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class Fields:
    """Typed reads from one mapping of a document, each failing with the key path and line."""

    def __init__(self, doc: Doc, path: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise doc.error(path, "a mapping", value)
        self.doc, self.path, self.data = doc, path, value
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def _raw(self, key: str, default: Any, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                path = self.at(key)
                raise ScenarioError(self.doc.file, path, self.doc.line(path), f"key {key!r}", "no such key")
            return default
        return self.data[key]

    def text(self, key: str, default: str | None = None) -> str:
        v = self._raw(key, default, default is None)
        if key not in self.data and default is not None:
            return default
        if not isinstance(v, str) or not v.strip():
            raise self.doc.error(self.at(key), "non-empty text", v)
        return v

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        v = self._raw(key, default, default is None)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.doc.error(self.at(key), "a whole number", v)
        if minimum is not None and v < minimum:
            raise self.doc.error(self.at(key), f"a whole number >= {minimum}", v)
        return v

    def number(self, key: str, default: float | None = None, minimum: float | None = None) -> float:
        v = self._raw(key, default, default is None)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.doc.error(self.at(key), "a number", v)
        if minimum is not None and v < minimum:
            raise self.doc.error(self.at(key), f"a number >= {minimum}", v)
        return float(v)

    def day(self, key: str, default: date | None = None) -> date:
        v = self._raw(key, default, default is None)
        if isinstance(v, date) and not isinstance(v, datetime):
            return v
        raise self.doc.error(self.at(key), "a date YYYY-MM-DD", v)

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        v = self._raw(key, default, default is None)
        if v not in choices:
            raise self.doc.error(self.at(key), "one of " + ", ".join(choices), v)
        return str(v)

    def items(self, key: str, required: bool = True) -> list[Any]:
        v = self._raw(key, [], required)
        if not isinstance(v, list):
            raise self.doc.error(self.at(key), "a list", v)
        return v

    def mapping(self, key: str, required: bool = False) -> dict[str, Any]:
        v = self._raw(key, {}, required)
        if not isinstance(v, dict):
            raise self.doc.error(self.at(key), "a mapping", v)
        return v

    def text_list(self, key: str) -> list[str]:
        values = self.items(key, required=False)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise self.doc.error(f"{self.at(key)}[{i}]", "text", v)
        return values

    def done(self) -> None:
        """Reject keys the reader does not know (a typo must not pass silently)."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            path, found = self.at(unknown[0]), f"unknown key {unknown[0]!r}"
            raise ScenarioError(self.doc.file, path, self.doc.line(path), f"one of the known keys ({known})", found)
