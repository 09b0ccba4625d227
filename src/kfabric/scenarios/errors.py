"""The error a bad scenario file raises: file, key path, line, what was expected and what was found."""

from __future__ import annotations

from kfabric.model.errors import ValidationError


class ScenarioError(ValidationError):
    def __init__(self, file: str, key_path: str, line: int | None, expected: str, found: str) -> None:
        self.file = file
        self.key_path = key_path
        self.line = line
        self.expected = expected
        self.found = found
        where = f"{file}:{line}" if line is not None else file
        where += f" at {key_path}" if key_path else ""
        super().__init__(where, f"expected {expected}, found {found}")
