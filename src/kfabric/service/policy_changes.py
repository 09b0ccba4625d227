"""The live scheduling policy in one place (``kfabric policy apply|show``).

The policy document is the YAML that ``kfabric serve --policy FILE`` and ``kfabric simulate --policy FILE`` read
(``base: PRESET`` plus overrides, :func:`kfabric.scenarios.policies.load_policy`), or a preset's name. Applying one
validates it, stores it as the active ``policy_sources`` row (the old row stays, inactive) and records both
documents in the audit log, in one transaction; the controller swaps its policy at its next cycle. While the store
holds an active row, ``kfabric serve --policy`` does not override it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import ValidationError
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.yamldoc import parse_doc
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS
from kfabric.service import audit
from kfabric.service.actors import Actor
from kfabric.store import tables as t


def policy_of_text(document: str, name: str, label: str = "policy document") -> Policy:
    """A policy from YAML text (as :func:`~kfabric.scenarios.policies.load_policy` reads a file) or a preset's
    name; errors name ``label``, the key and its line."""
    if document.strip() in PRESETS:
        return PRESETS[document.strip()]
    doc = parse_doc(document, label)
    if not isinstance(doc.data, dict):
        raise doc.error("", "a mapping of policy settings (or a preset name: " + ", ".join(PRESETS) + ")", doc.data)
    data: dict[str, Any] = dict(doc.data)
    base_name = data.pop("base", "kfabric")
    if not isinstance(base_name, str) or base_name not in PRESETS:
        raise doc.error("base", "a preset name: " + ", ".join(PRESETS), base_name)
    try:
        overrides = Policy.from_mapping(data, where="policy")
    except ValidationError as exc:
        key = exc.where.removeprefix("policy.").split(".")[0]
        raise ScenarioError(doc.file, key, doc.line(key), exc.fix or "a valid value", exc.problem) from None
    changed = {f.name: getattr(overrides, f.name) for f in fields(Policy) if f.name in data}
    if "name" not in data:
        changed["name"] = name
    return replace(PRESETS[base_name], **changed)


def policy_json(policy: Policy) -> dict[str, Any]:
    """Every setting of ``policy`` (tuples as lists), as ``kfabric policy show`` prints it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(policy).items()}


@dataclass(frozen=True)
class StoredPolicy:
    id: int
    name: str
    document: str
    applied_at_s: float
    applied_by: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "document": self.document, "applied_at_s": self.applied_at_s,
                "applied_by": self.applied_by}  # fmt: skip


def _active_row(s: Session, lock: bool = False) -> t.PolicySource | None:
    query = select(t.PolicySource).where(t.PolicySource.active.is_(True)).order_by(t.PolicySource.id.desc())
    return s.scalars(query.with_for_update() if lock else query).first()


def stored_policy(s: Session) -> StoredPolicy | None:
    """The active policy document, if one was applied."""
    row = _active_row(s)
    if row is None:
        return None
    return StoredPolicy(row.id, row.name, row.document, row.applied_at_s, row.applied_by)


def apply_policy(
    sessions: sessionmaker[Session], actor: Actor, document: str, name: str, now_s: float
) -> tuple[StoredPolicy, Policy]:
    """Validate ``document`` and make it the live policy at the controller's next cycle (audited: the old and the
    new document). Refused whole when invalid."""
    actor.require_operator("change the scheduling policy")
    if not name.strip():
        raise ValidationError("name", "is empty", "name the policy (the CLI uses the file's name)")
    policy = policy_of_text(document, name)
    with sessions.begin() as s:
        old = _active_row(s, lock=True)
        for row in s.scalars(select(t.PolicySource).where(t.PolicySource.active.is_(True))).all():
            row.active = False
        row = t.PolicySource(
            name=policy.name, document=document, applied_at_s=now_s, applied_by=actor.name, active=True
        )
        s.add(row)
        s.flush()
        detail = {
            "name": policy.name,
            "document": document,
            "old_name": old.name if old is not None else None,
            "old_document": old.document if old is not None else None,
        }
        audit.record(s, actor.name, "policy.apply", "policy", row.id, now_s, detail=detail)
        stored = StoredPolicy(row.id, row.name, row.document, row.applied_at_s, row.applied_by)
    return stored, policy
