"""The plain records the portal's services return: a stored row's columns copied into a frozen dataclass, so that
pages (``kfabric.web``) read facts without holding, or importing, the store's tables.

``of(Record, row)`` copies the fields the record names from any object that has them (an ORM row)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


def of(record: type[R], row: Any) -> R:
    """``record`` built from the attributes of ``row`` that it names."""
    return record(**{f.name: getattr(row, f.name) for f in fields(record)})  # type: ignore[arg-type]


class Window(Protocol):
    """Which rows of a long table a page shows (the portal's ``Paging``)."""

    @property
    def size(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    project_id: int
    user_id: int
    name: str
    spec: dict[str, Any]
    state: str
    reason_code: str
    reason: str
    expected_start_s: float | None
    expected_start_why: str
    submitted_at_s: float
    started_at_s: float | None
    ended_at_s: float | None
    exit_code: int | None
    placement: dict[str, Any] | None
    grant_id: int | None
    backend: str
    attempt: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class JobEventRecord:
    at_s: float
    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    id: int
    name: str
    description: str
    owner: str
    weight: float
    rules: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApplicationRecord:
    id: int
    program_id: int
    organization_id: int
    project_id: int
    gpu_model_class: str
    gpus: int
    months: int
    justification: str
    status: str
    created_at_s: float
    decided_at_s: float | None
    decided_by: int | None
    decision_note: str


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    id: int
    application_id: int
    reviewer_id: int
    scores: dict[str, Any]
    weighted: float
    comment: str
    created_at_s: float


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at_s: float
    actor: str
    action: str
    object_type: str
    object_id: str
    organization_id: int | None
    detail: dict[str, Any]
