"""Operations on the running service (operators): fleet changes (``POST /v1/fleet/apply``), node drains
(``/v1/nodes``) and the live scheduling policy (``/v1/policy``). Changes take effect at the controller's next
cycle; each is one audited transaction, refused whole when invalid."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import AfterValidator, Field
from starlette.concurrency import run_in_threadpool

from kfabric.api.deps import Caller
from kfabric.api.schemas import ShortText, Strict
from kfabric.service import fleet_changes, policy_changes

router = APIRouter(prefix="/v1", tags=["operations"])


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


#: a scenario or policy YAML document (korea-2030's is 34 kB)
Document = Annotated[str, Field(min_length=1, max_length=900_000), AfterValidator(_no_nul)]
NodeName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")]


class FleetApply(Strict):
    """A desired fleet (the scenario YAML schema). ``running``: what happens to work on nodes that leave or on
    pools whose GPUs change: ``finish`` (it runs to its end; the nodes drain) or ``requeue``."""

    document: Document
    running: Literal["finish", "requeue"] | None = None
    dry_run: bool = False


class NodeDrain(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
    requeue: bool = False


class PolicyApply(Strict):
    """A policy document (``base: PRESET`` plus overrides, as ``kfabric serve --policy FILE`` reads) or a preset's
    name; ``name`` is used when the document names none."""

    document: Document
    name: ShortText = "policy"


@router.post("/fleet/apply")
async def fleet_apply(body: FleetApply, c: Caller) -> dict[str, Any]:
    """Compare the document with the stored fleet; unless ``dry_run``, store it for the next cycle."""
    backends = set(c.rt.controller.backends)

    def apply() -> fleet_changes.FleetChange:
        return fleet_changes.apply_fleet(
            c.rt.sessions, c.actor, body.document, backends, c.now, body.running, body.dry_run, "fleet document"
        )

    return (await run_in_threadpool(apply)).to_json()


@router.get("/nodes")
def nodes(c: Caller) -> list[dict[str, Any]]:
    """Nodes out of service (operators' drains, backends' down/drain/fail, nodes leaving the fleet), with why."""
    return [n.to_json() for n in fleet_changes.list_nodes(c.rt.sessions, c.actor)]


@router.post("/nodes/{node}/drain")
def drain(node: NodeName, body: NodeDrain, c: Caller) -> dict[str, Any]:
    """No new placements on the node; running work goes on unless ``requeue``."""
    return fleet_changes.drain_node(c.rt.sessions, c.actor, node, body.reason, c.now, body.requeue).to_json()


@router.post("/nodes/{node}/resume")
def resume(node: NodeName, c: Caller) -> dict[str, Any]:
    """Undo an operator's drain (a backend's own down/drain stays until the backend reports the node up)."""
    return fleet_changes.resume_node(c.rt.sessions, c.actor, node, c.now).to_json()


@router.post("/policy")
def policy_apply(body: PolicyApply, c: Caller) -> dict[str, Any]:
    """Validate the document and make it the live policy at the next cycle."""
    stored, policy = policy_changes.apply_policy(c.rt.sessions, c.actor, body.document, body.name, c.now)
    return {"stored": stored.to_json(), "policy": policy_changes.policy_json(policy), "effective": "next cycle"}


@router.get("/policy")
def policy_show(c: Caller) -> dict[str, Any]:
    """The policy the controller schedules with now, and the stored one (if a change is not in effect yet)."""
    c.actor.require_operator("read the scheduling policy")
    ctl = c.rt.controller
    with c.rt.sessions() as s:
        stored = policy_changes.stored_policy(s)
    return {
        "policy": policy_changes.policy_json(ctl.policy),
        "source": f"policy apply #{ctl.policy_source_id}"
        if ctl.policy_source_id is not None
        else "kfabric serve --policy",
        "stored": stored.to_json() if stored is not None else None,
        "pending": stored is not None and stored.id != ctl.policy_source_id,
    }
