"""Data classification of jobs and clearance of sites (product spec section 6)."""

from __future__ import annotations

from enum import IntEnum


class Classification(IntEnum):
    """Ordered: a site cleared for a level may run every job at that level or below."""

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Classification:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(c.label for c in cls)
            raise ValueError(f"unknown classification {text!r}; expected one of: {choices}") from None


def clearance_rule(site_name: str, certification: str, clearance: Classification, job: Classification) -> str:
    """The sentence an auditor reads for a placement: which rule allowed a job of ``job`` class on the site."""
    return (
        f"site {site_name} ({certification}) is cleared up to {clearance.label}; "
        f"job is {job.label} <= {clearance.label}"
    )
