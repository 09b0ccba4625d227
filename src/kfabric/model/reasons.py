"""Why a job waits: a machine-readable code and a sentence a tenant understands."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ReasonCode(Enum):
    PRIORITY = "priority"
    RESOURCES = "resources"
    RESERVATION = "reservation"
    QUOTA = "quota"
    TOPOLOGY = "topology"
    GPU_MODEL = "gpu_model"
    SOVEREIGNTY = "sovereignty"
    POWER_CAP = "power_cap"
    MAX_DURATION = "max_duration"
    GRANT_EXPIRED = "grant_expired"
    CREDIT_EXHAUSTED = "credit_exhausted"
    NO_GRANT = "no_grant"
    NOT_ONLINE = "not_online"
    CYCLE_LIMIT = "cycle_limit"


@dataclass(frozen=True, slots=True)
class PendingReason:
    code: ReasonCode
    message: str
    expected_start_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
