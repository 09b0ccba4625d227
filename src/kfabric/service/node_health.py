"""Node health: backends' node facts into the ``node_states`` table, and the live view of the fleet (the sinfo of
the fabric).

:func:`sync` runs in every reconcile, inside the controller's (fenced) transaction, right after the backends were
polled. For each backend that answered the poll and reports nodes (``ReportsNodes``), the nodes it reports not up
become ``node_states`` rows with ``source`` = the backend's name; a row goes when the node is up again. Rows
change only when a fact changes, and each change of state is audited (``node.down``, ``node.up``, actor
``controller``, with the reason). :class:`~kfabric.service.live_state.LiveState` takes every node with such a
row out of scheduling in the same tick. A backend that cannot be reached (``BackendUnavailable``) changes
nothing: a cluster the controller cannot see is never marked down.

Work on a node that is ``down`` or ``fail`` is lost: the backend reports those attempts LOST (sim's
``fail_node``; Slurm's NODE_FAIL) and the controller requeues them from their last checkpoint. :func:`sync`
names the node and its reason in those reports first, so the requeue says why (``requeued after: node X failed:
REASON``, in the job's events and its ``job.requeue`` audit entry). A ``drain`` lets running work finish.

:func:`live_view` is ``GET /v1/fleet/live``: per pool, nodes by state and GPUs free, allocated and out, and the
nodes out of service with why and since when. It reads the store (placements of admitted and running jobs,
``node_states`` rows, pools' online dates), so any server answers it, leader or standby.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from kfabric.backends.base import Backend, BackendUnavailable, NodeFact, ReportsNodes, RunReport, RunState
from kfabric.model.errors import PermissionDenied
from kfabric.model.job import JobState
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.service.live_state import LiveState
from kfabric.store import tables as t

log = logging.getLogger("kfabric.controller")
#: the actor of node health's audit entries (the controller's)
CONTROLLER = "controller"
ACTIVE = (JobState.ADMITTED.value, JobState.RUNNING.value)
NODE_STATE_KEYS = ("idle", "mixed", "allocated", "drain", "down", "future")
_SEVERITY = {"up": 0, "drain": 1, "fail": 2, "down": 3}


class NodeHealthHost(Protocol):
    """What :func:`sync` reads from the controller."""

    backends: dict[str, Backend]
    live: LiveState
    pool_backend: dict[str, str]


@dataclass
class SyncReport:
    down: list[str]
    up: list[str]
    unavailable: list[str]


# ---- reconcile: facts → node_states ------------------------------------------------------------------------------


def sync(
    s: Session,
    host: NodeHealthHost,
    polled: Iterable[str],
    reports: MutableMapping[tuple[str, int], RunReport],
    now_s: float,
) -> SyncReport:
    """Write the node facts of every backend in ``polled`` into ``node_states`` (in ``s``, the reconcile's
    transaction) and name a failed node's reason in the LOST ``reports`` of attempts placed on it."""
    out = SyncReport([], [], [])
    epoch = getattr(host, "epoch", None)
    for name in sorted(polled):
        facts = _facts_of(name, host.backends[name], out)
        if facts is None:
            continue
        known = host.live.names_of(name)
        wanted = {f.name: f for f in facts if not f.up and f.name in known}
        _write(s, name, wanted, now_s, epoch, out)
        lost = {n: f for n, f in wanted.items() if f.lost}
        if lost:
            _explain_losses(s, name, host.live, known, lost, reports)
    return out


def _facts_of(name: str, backend: Backend, out: SyncReport) -> list[NodeFact] | None:
    """The backend's facts; [] when it reports none (every node up); None when they cannot be known now."""
    if not isinstance(backend, ReportsNodes):
        return []
    try:
        return backend.nodes()
    except BackendUnavailable as exc:
        out.unavailable.append(name)
        log.warning("node states of backend %s unknown, left as they were: %s", name, exc)
    except (ValueError, OSError) as exc:
        out.unavailable.append(name)
        log.warning("node states of backend %s could not be read, left as they were: %s", name, exc)
    return None


#: per LiveState: its fleet and node names when computed, and each backend's node names → indices
def _write(
    s: Session, source: str, wanted: dict[str, NodeFact], now_s: float, epoch: int | None, out: SyncReport
) -> None:
    """Make ``source``'s rows match ``wanted`` (the nodes it reports not up), touching only what changed."""
    rows = {r.node: r for r in s.scalars(select(t.NodeState).where(t.NodeState.source == source))}
    fence = {"epoch": epoch} if epoch is not None else {}
    for node in sorted(set(rows) - set(wanted)):
        row = rows[node]
        detail = {"source": source, "was": row.state, "reason": row.reason, **fence}
        s.delete(row)
        audit.record(s, CONTROLLER, "node.up", "node", node, now_s, None, detail)
        out.up.append(node)
        log.info("node %s is back in service (%s reports it up)", node, source)
    for node, fact in sorted(wanted.items()):
        if _put(s, source, rows.get(node), fact, now_s):
            detail = {"source": source, "state": fact.state, "reason": fact.reason, **fence}
            audit.record(s, CONTROLLER, "node.down", "node", node, now_s, None, detail)
            out.down.append(node)
            log.warning("node %s out of service: %s (%s)", node, fact.state, fact.reason or "no reason given")


def _put(s: Session, source: str, row: t.NodeState | None, fact: NodeFact, now_s: float) -> bool:
    """Write ``fact`` into its row (a new one when ``row`` is None); whether its state changed."""
    if row is not None and row.state == fact.state:
        if row.reason != fact.reason:
            row.reason = fact.reason  # same state, new wording: no audit entry
        return False
    since = fact.since_s if fact.since_s is not None and fact.since_s <= now_s else now_s
    if row is None:
        row = t.NodeState(node=fact.name, source=source)
        s.add(row)
    row.state, row.reason, row.since_s, row.by = fact.state, fact.reason, since, CONTROLLER
    return True


def failure_message(fact: NodeFact, backend_message: str) -> str:
    """Why an attempt on a failed node was lost: the node, its state and reason, and what the backend said when
    it adds anything (the sim backend already names the node)."""
    verb = "failed" if fact.state == "fail" else "is down"
    text = f"node {fact.name} {verb}: {fact.reason}" if fact.reason else f"node {fact.name} {verb}"
    if backend_message and not backend_message.startswith(f"node {fact.name} "):
        text += f" ({backend_message})"
    return text


def _explain_losses(
    s: Session,
    backend: str,
    live: LiveState,
    known: Mapping[str, int],
    lost: Mapping[str, NodeFact],
    reports: MutableMapping[tuple[str, int], RunReport],
) -> None:
    lost_reports = {int(k[0]): r for k, r in reports.items() if r.state is RunState.LOST and k[0].isdigit()}
    if not lost_reports:
        return
    index_to_fact = {known[n]: f for n, f in lost.items()}
    query = select(t.Job.id, t.Job.attempt, t.Job.placement).where(
        t.Job.id.in_(list(lost_reports)), t.Job.backend == backend, t.Job.state.in_(ACTIVE)
    )
    for job_id, attempt, placement in s.execute(query):
        report = lost_reports[job_id]
        if report.attempt != attempt:
            continue
        nodes = [share[0] for share in (placement or {}).get("shares", [])]
        fact = next((index_to_fact[n] for n in nodes if n in index_to_fact), None)
        if fact is not None:
            reports[(report.job_id, report.attempt)] = replace(report, message=failure_message(fact, report.message))


# ---- the live view (GET /v1/fleet/live) --------------------------------------------------------------------------


def require_viewer(actor: Actor) -> None:
    """Operators see every pool, providers their owner's pools; nobody else sees the live fleet."""
    if actor.role is Role.OPERATOR:
        return
    if actor.role is Role.PROVIDER and actor.owner:
        return
    raise PermissionDenied(
        "see the live fleet",
        f"operators and providers see node states; you are {actor.role.value}",
        "ask an operator (kfabric fleet show --live), or read GET /v1/fleet for pools and allocations",
    )


@dataclass(frozen=True, slots=True)
class _OutRow:
    source: str
    state: str
    reason: str
    since_s: float
    by: str


def live_view(
    s: Session, live: LiveState, pool_backend: Mapping[str, str], actor: Actor, now_s: float
) -> dict[str, Any]:
    """The fleet now, as ``kfabric fleet show --live`` prints it (see the module docstring)."""
    require_viewer(actor)
    fleet = live.fleet
    day = datetime.fromtimestamp(now_s, UTC).date()
    used = _allocated_milli(s)
    outs = _out_rows(s, live, pool_backend)
    pools: list[dict[str, Any]] = []
    out_nodes: list[dict[str, Any]] = []
    for pool, info in zip(fleet.pools, live.snap.capacity.pools, strict=True):
        if actor.role is not Role.OPERATOR and pool.owner != actor.owner:
            continue
        online = pool.online <= day
        states = dict.fromkeys(NODE_STATE_KEYS, 0)
        full = info.gpus_per_node * 1000
        free = allocated = gone = 0
        for node in info.node_range:
            milli = used.get(node, 0)
            allocated += milli
            rows = outs.get(node, [])
            if not online or rows:
                states["future" if not online else _out_state(rows)] += 1
                gone += full - min(milli, full)
                if rows:
                    out_nodes.append(_out_entry(live.node_names[node], pool.name, rows, milli))
                continue
            free += full - min(milli, full)
            states["idle" if milli == 0 else "allocated" if milli >= full else "mixed"] += 1
        cluster = fleet.cluster(pool.cluster)
        pools.append(
            {
                "name": pool.name,
                "site": cluster.site,
                "cluster": pool.cluster,
                "backend": pool_backend.get(pool.name, cluster.backend),
                "owner": pool.owner,
                "gpu_model": pool.gpu_model,
                "online": pool.online.isoformat(),
                "nodes": pool.nodes,
                "node_states": states,
                "gpus": pool.gpus,
                "gpus_free": round(free / 1000, 3),
                "gpus_allocated": round(allocated / 1000, 3),
                "gpus_out": round(gone / 1000, 3),
            }
        )
    totals = {k: round(sum(p[k] for p in pools), 3) for k in ("gpus", "gpus_free", "gpus_allocated", "gpus_out")}
    totals["nodes"] = sum(p["nodes"] for p in pools)
    node_totals = {k: sum(p["node_states"][k] for p in pools) for k in NODE_STATE_KEYS}
    out_nodes.sort(key=lambda o: (o["pool"], o["node"]))
    return {"name": fleet.name, "at_s": now_s, "pools": pools, "totals": {**totals, "node_states": node_totals},
            "out": out_nodes}  # fmt: skip


def _allocated_milli(s: Session) -> dict[int, int]:
    """GPU milli held on each node by admitted and running jobs (what their placements hold)."""
    used: dict[int, int] = defaultdict(int)
    for placement in s.scalars(select(t.Job.placement).where(t.Job.state.in_(ACTIVE))):
        for node, gpus, milli, *_rest in (placement or {}).get("shares", []):
            used[int(node)] += len(gpus) * int(milli)
    return used


def _out_rows(s: Session, live: LiveState, pool_backend: Mapping[str, str]) -> dict[int, list[_OutRow]]:
    """``node_states`` rows not ``up``, by fleet node index: a backend's rows name its own nodes, an operator's (or
    any other source's) a node by name as LiveState reads them."""
    backends = set(pool_backend.values())
    found: dict[int, list[_OutRow]] = defaultdict(list)
    query = select(t.NodeState).where(t.NodeState.state != "up").order_by(t.NodeState.node, t.NodeState.source)
    for row in s.scalars(query):
        names = live.names_of(row.source) if row.source in backends else live.node_index
        index = names.get(row.node)
        if index is not None:
            found[index].append(_OutRow(row.source, row.state, row.reason, row.since_s, row.by))
    return found


def _out_state(rows: list[_OutRow]) -> str:
    return "down" if any(r.state in ("down", "fail") for r in rows) else "drain"


def _out_entry(node: str, pool: str, rows: list[_OutRow], milli: int) -> dict[str, Any]:
    worst = max(rows, key=lambda r: _SEVERITY.get(r.state, 0))
    return {
        "node": node,
        "pool": pool,
        "state": worst.state,
        "since_s": min(r.since_s for r in rows),
        "gpus_allocated": round(milli / 1000, 3),
        "reasons": [
            {"source": r.source, "state": r.state, "reason": r.reason, "since_s": r.since_s, "by": r.by} for r in rows
        ],
    }
