"""Node health from Slurm: ``sinfo --json`` node states → kfabric :class:`~kfabric.backends.base.NodeFact`.

What Slurm 22.05 prints (checked on a private 22.05 cluster): ``state`` is the base state in lower case
(``idle``, ``mixed``, ``allocated``, ``completing``, ``down``, ``future``, ``unknown``, ``error``) and
``state_flags`` the flags in upper case (``DRAIN``, ``FAIL``, ``NOT_RESPONDING``, ``REBOOT_ISSUED``, ...);
the text forms ``sinfo`` shows (``drained``/``draining``, ``fail``/``failing``, ``down*``) are derived from
both. ``reason`` is the administrator's or slurmctld's reason, ``reason_changed_at`` its epoch time. Newer Slurm
prints ``state`` as a list (base state first, then flags); both shapes are read.

==============================================  =========  ==============================================
Slurm                                           kfabric    running work
==============================================  =========  ==============================================
idle, mixed, allocated, completing (no flag)    up         —
``POWERED_DOWN``/``POWERING_DOWN`` (power       up         Slurm powers the node up for the next job
saving) with no other flag
``DRAIN`` (drained, draining)                   drain      finishes (as in Slurm)
``FAIL`` (fail, failing)                        fail       Slurm lets it run; kfabric places nothing new
base ``down``                                   down       Slurm ends it NODE_FAIL → LOST → requeued
``NOT_RESPONDING`` (``*``)                      down       Slurm ends it NODE_FAIL once it declares the node
                                                           down (``SlurmdTimeout``) → requeued then
``REBOOT_ISSUED``, ``INVALID_REG``              down       —
base ``future``, ``unknown``, ``error``         down       —
==============================================  =========  ==============================================

The worst cause wins (down before fail before drain). The fact's reason is ``Slurm CAUSE: REASON`` (``Slurm
drain: bad gpu 3``, ``Slurm not responding``), stable while the cause lasts so a draining node that becomes
drained is not a change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kfabric.backends.base import NodeFact
from kfabric.backends.slurm.discover import gpu_gres

#: base states in which a node runs jobs
RUNNABLE = frozenset({"idle", "allocated", "mixed", "completing"})
#: base states that take a node out, with kfabric's state and the cause named in the reason
BASE_OUT: dict[str, tuple[str, str]] = {
    "down": ("down", "down"),
    "future": ("down", "not in service yet (FUTURE)"),
    "unknown": ("down", "state unknown (slurmd has not registered)"),
    "error": ("down", "error"),
}
#: flags that take a node out, worst first, with kfabric's state and the cause named in the reason
FLAGS_OUT: tuple[tuple[str, str, str], ...] = (
    ("NOT_RESPONDING", "down", "not responding"),
    ("REBOOT_ISSUED", "down", "rebooting"),
    ("INVALID_REG", "down", "invalid registration"),
    ("FAIL", "fail", "fail"),
    ("DRAIN", "drain", "drain"),
)
_SEVERITY = {"up": 0, "drain": 1, "fail": 2, "down": 3}
#: seconds the Slurm backend keeps node facts before reading ``sinfo`` again (poll reads them when stale)
NODE_FACTS_EVERY_S = 10.0


def state_and_flags(raw: dict[str, Any]) -> tuple[str, frozenset[str]]:
    """Base state (lower case) and flags (upper case) of a ``sinfo --json`` node, in 22.05's shape (``state`` a
    string, ``state_flags`` a list) or the newer one (``state`` a list, base state first)."""
    state = raw.get("state")
    flags = {str(f).upper() for f in raw.get("state_flags") or ()}
    if isinstance(state, list):
        words = [str(w) for w in state]
        base = words[0].lower() if words else "unknown"
        flags |= {w.upper() for w in words[1:]}
    else:
        base = str(state or "unknown").lower()
    return base, frozenset(flags)


def node_fact(raw: dict[str, Any]) -> NodeFact:
    """One ``sinfo --json`` node → its fact (see the module docstring)."""
    name = str(raw["name"])
    base, flags = state_and_flags(raw)
    causes: list[tuple[str, str]] = []
    if base in BASE_OUT:
        causes.append(BASE_OUT[base])
    elif base not in RUNNABLE:
        causes.append(("down", f"state {base}"))
    causes.extend((state, cause) for flag, state, cause in FLAGS_OUT if flag in flags)
    _gtype, gpus = gpu_gres(str(raw.get("gres") or ""))
    total = gpus or None
    if not causes:
        return NodeFact(name, "up", "", total, total)
    state, cause = max(causes, key=lambda c: _SEVERITY[c[0]])
    reason = str(raw.get("reason") or "").strip()
    since = raw.get("reason_changed_at")
    since_s = float(since) if isinstance(since, int | float) and since > 0 else None
    text = f"Slurm {cause}: {reason}" if reason else f"Slurm {cause}"
    return NodeFact(name, state, text, total, None, since_s)


def node_facts(nodes: Iterable[dict[str, Any]]) -> list[NodeFact]:
    """Facts of every named node of a ``sinfo --json`` answer (``SlurmCli.sinfo_nodes()``), once per node."""
    facts = {str(raw["name"]): node_fact(raw) for raw in nodes if raw.get("name")}
    return list(facts.values())
