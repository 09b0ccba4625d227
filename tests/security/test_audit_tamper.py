"""Attacks on the audit log (issue 15, hole 4): someone who can write the store edits, removes or re-hashes
entries; each change fails verification, with the key kept outside the store and an exported head."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from api_world import DAY, Api, World
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from kfabric.model.errors import Conflict
from kfabric.service import audit, audit_keys
from kfabric.store import tables as t


def _verify(api: Api, against: dict[str, object] | None = None) -> dict[str, object]:
    params = {"against_entries": against["entries"], "against_hash": against["hash"]} if against else None
    r = api.get("/v1/audit/verify", api.operator, params=params)
    return {"status": r.status_code, **r.json()}


def _newest(s: Session, n: int = 1) -> list[t.AuditEntry]:
    return list(s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id.desc()).limit(n)).all())


def _move_org(s: Session) -> None:
    """Show an entry to another tenant: the organization is covered by the hash."""
    e = _newest(s)[0]
    s.execute(update(t.AuditEntry).where(t.AuditEntry.id == e.id).values(organization_id=(e.organization_id or 0) + 1))


def _edit_detail(s: Session) -> None:
    e = _newest(s)[0]
    s.execute(update(t.AuditEntry).where(t.AuditEntry.id == e.id).values(detail={"forged": True}))


def _drop_middle(s: Session) -> None:
    rows = s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id)).all()
    s.delete(rows[len(rows) // 2])


def _rehash_without_key(s: Session) -> None:
    """Recompute the whole chain after an edit, as someone with the database but not the key would: plain
    SHA-256, the same HMAC shape under a guessed key, keeping the key ids."""
    prev = audit.GENESIS
    rows = s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id)).all()
    guessed = audit_keys.Keyring({e.key_id: b"guess" * 8 for e in rows}, rows[0].key_id)
    for i, e in enumerate(rows):
        if i == 0:
            e.actor = "someone-else"
        e.prev_hash = prev
        _kid, e.hash = audit.entry_digest(
            guessed, prev, e.at_s, e.actor, e.action, e.object_type, e.object_id, e.organization_id, e.detail, e.key_id
        )
        prev = e.hash
    s.flush()
    s.execute(update(t.ChainHead).values(hash=prev))


def _rewrite_as_unkeyed(s: Session) -> None:
    """Recompute the chain with the old unkeyed rule and key id ``""``."""
    prev = audit.GENESIS
    for e in s.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id)).all():
        body = json.dumps([e.at_s, e.actor, e.action, e.object_type, e.object_id, e.detail], sort_keys=True,
                          separators=(",", ":"))  # fmt: skip
        e.prev_hash, e.key_id = prev, ""
        e.hash = hashlib.sha256((prev + body).encode()).hexdigest()
        prev = e.hash
    s.flush()
    s.execute(update(t.ChainHead).values(hash=prev))


TAMPERING: list[tuple[str, Callable[[Session], None], str]] = [
    ("organization_id", _move_org, "does not match its content"),
    ("detail", _edit_detail, "does not match its content"),
    ("removed-entry", _drop_middle, "does not link"),
    ("rehash-without-key", _rehash_without_key, "does not match its content"),
    ("rewritten-unkeyed", _rewrite_as_unkeyed, "not signed with an audit key"),
]


@pytest.mark.parametrize(("tamper", "problem"), [(f, p) for _n, f, p in TAMPERING], ids=[n for n, _f, _p in TAMPERING])
def test_tampering_fails_verification(world: World, tamper: Callable[[Session], None], problem: str) -> None:
    api = world.api
    assert _verify(api)["status"] == 200
    with api.rt.sessions.begin() as s:
        tamper(s)
    answer = _verify(api)
    assert answer["status"] == 409, answer
    assert problem in str(answer["error"]), answer


def test_truncation_after_an_exported_head_is_detected(world: World) -> None:
    api = world.api
    exported = api.get("/v1/audit/head", api.operator).json()
    assert exported["entries"] > 3 and exported["format"] == "kfabric-audit-head/1"
    assert _verify(api, exported)["status"] == 200
    # remove the newest entries and move the head back: the chain itself still verifies ...
    with api.rt.sessions.begin() as s:
        newest = _newest(s, 3)
        for e in newest:
            s.delete(e)
        s.flush()
        keep = _newest(s)[0]
        s.execute(update(t.ChainHead).values(hash=keep.hash, count=exported["entries"] - 3))
    assert _verify(api)["status"] == 200
    # ... but not against the exported head
    answer = _verify(api, exported)
    assert answer["status"] == 409 and "fewer than" in answer["error"]["message"], answer


def test_head_still_matches_after_later_appends(world: World) -> None:
    api = world.api
    exported = api.get("/v1/audit/head", api.operator).json()
    world.submit(world.token("member", "snu-vision"), "vision-lab", gpus=1, time_limit_s=600)
    answer = _verify(api, exported)
    assert answer["status"] == 200 and answer["anchored"] is True
    assert answer["entries"] > exported["entries"]


def test_tenants_cannot_export_or_verify(world: World) -> None:
    for path in ("/v1/audit/head", "/v1/audit/verify"):
        assert world.api.get(path, world.token("org-admin", "snu-vision")).status_code == 403


def test_a_job_s_audit_trail_says_why_it_ran_where_it_did(world: World) -> None:
    api = world.api
    member = world.token("member", "snu-vision")
    job = world.submit(member, "vision-lab", gpus=1, time_limit_s=600, runtime_estimate_s=60)
    api.tick(30.0, times=6)
    admin = world.token("org-admin", "snu-vision")
    trail = api.get("/v1/audit", admin, params={"job": job}).json()
    actions = [e["action"] for e in trail]
    assert actions[:3] == ["job.submit", "job.admit", "job.start"], actions
    admit = trail[1]["detail"]
    assert admit["pool"] and admit["nodes"] and admit["gpus"] == 1
    assert admit["sovereignty"] and admit["capacity"] and admit["grant"]
    # another tenant may not read it
    assert api.get("/v1/audit", world.token("org-admin", "tinyml"), params={"job": job}).status_code == 404


def test_ended_jobs_are_audited(world: World) -> None:
    api = world.api
    job = world.submit(world.token("member", "snu-vision"), "vision-lab", gpus=1, time_limit_s=600,
                       runtime_estimate_s=60)  # fmt: skip
    api.tick(60.0, times=10)
    trail = [e["action"] for e in api.get("/v1/audit", api.operator, params={"job": job}).json()]
    assert trail[-1] == "job.end", trail


def test_a_missing_key_stops_the_server(world: World, tmp_path: Path) -> None:
    """Starting on this store with another key file would sign a chain that no longer verifies: refused."""
    from kfabric.backends.sim import SimBackend
    from kfabric.scenarios.policies import load_policy
    from kfabric.service.runtime import open_runtime

    url = str(world.api.rt.engine.url.render_as_string(hide_password=False))
    with pytest.raises(Conflict, match="lacks audit key"):
        open_runtime(url, load_policy("kfabric"), {"sim": SimBackend(lambda: 0.0)}, audit_key_file=tmp_path / "new.key")


def test_key_file_is_private_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    ring = audit_keys.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert audit_keys.rotate(path) != ring.current
    again = audit_keys.load_or_create(path)
    assert ring.current in again.keys and again.current != ring.current


def test_unkeyed_store_is_signed_once_at_first_keyed_start(api: Api) -> None:
    """A store written before keys existed: its old chain is checked, then signed; it verifies from then on."""
    with api.rt.sessions.begin() as s:
        _rewrite_as_unkeyed(s)
    with api.rt.sessions.begin() as s:
        assert audit.sign_legacy(s, api.clock.now) > 0
    answer = _verify(api)
    assert answer["status"] == 200, answer
    assert api.get("/v1/audit", api.operator, params={"action": "audit.sign"}).json()


def test_verify_names_the_exported_head_mismatch(world: World) -> None:
    api = world.api
    exported = api.get("/v1/audit/head", api.operator).json()
    forged = {**exported, "hash": "f" * 64}
    answer = _verify(api, forged)
    assert answer["status"] == 409 and "differs from the exported head" in answer["error"]["message"]
    with api.rt.sessions() as s:
        assert s.execute(text("SELECT count(*) FROM audit_log")).scalar() == exported["entries"]
    assert DAY > 0
