"""Domain errors. Each says what is wrong, where, and how to fix it; the edges map them to messages."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class KfabricError(Exception):
    """Base of every error kfabric raises on purpose."""


class ValidationError(KfabricError):
    """A value is invalid. ``where`` names the object and field, ``fix`` tells the user what to do."""

    def __init__(self, where: str, problem: str, fix: str = "") -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        text = f"{where}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class TransitionError(KfabricError):
    """A job state change that the state machine does not allow."""

    def __init__(self, job_id: str, current: str, wanted: str, allowed: tuple[str, ...]) -> None:
        self.job_id = job_id
        self.current = current
        self.wanted = wanted
        allowed_text = ", ".join(allowed) if allowed else "none (final state)"
        super().__init__(f"job {job_id}: cannot go from {current} to {wanted}; allowed from {current}: {allowed_text}")


def require(condition: bool, where: str, problem: str, fix: str = "") -> None:
    """Raise :class:`ValidationError` unless ``condition`` holds."""
    if not condition:
        raise ValidationError(where, problem, fix)


def require_name(value: str, where: str) -> None:
    """Names are non-empty, have no slash (they form topology paths) and no surrounding spaces."""
    require(
        isinstance(value, str) and value != "" and value == value.strip(),
        where,
        f"name must be a non-empty string without leading/trailing spaces, got {value!r}",
        "use a short identifier such as 'nhn-gwangju'",
    )
    require("/" not in value, where, f"name {value!r} contains '/'", "names form topology paths; drop the '/'")


class NotFound(KfabricError):
    """The object does not exist, or the caller may not know that it exists (tenants never learn of each
    other's objects: the API answers 404 for both)."""

    def __init__(self, what: str, key: object, fix: str = "") -> None:
        self.what, self.key, self.fix = what, key, fix
        text = f"{what} {key!r} not found"
        super().__init__(text + (f" (fix: {fix})" if fix else ""))


class PermissionDenied(KfabricError):
    """The caller may see the object but not do this to it."""

    def __init__(self, action: str, why: str, fix: str = "") -> None:
        self.action, self.why, self.fix = action, why, fix
        super().__init__(f"not allowed to {action}: {why}" + (f" (fix: {fix})" if fix else ""))


class Conflict(KfabricError):
    """The request clashes with the object's current state (e.g. cancelling a finished job, a duplicate name)."""

    def __init__(self, where: str, problem: str, fix: str = "") -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}" + (f" (fix: {fix})" if fix else ""))


class Unauthenticated(KfabricError):
    """No valid credentials were presented."""

    def __init__(self, problem: str, fix: str = "send Authorization: Bearer kf_... (CLI: KFABRIC_TOKEN)") -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} (fix: {fix})")


def choice_of(kind: type[E], text: object, where: str, noun: str) -> E:
    """The member of the enum ``kind`` whose value is ``text``; a :class:`ValidationError` at ``where`` ("unknown
    ``noun`` ..."), listing the values, otherwise."""
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise ValidationError(where, f"unknown {noun} {text!r}", f"use one of: {choices}") from None
