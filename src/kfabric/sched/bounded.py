"""Single-node placement in a large fleet: a bounded set of candidates per pool, read from the capacity index.

Scoring every node of a national fleet for every job costs too much per scheduling cycle, so in a fleet
larger than ``placement.EXACT_SCAN_NODES`` nodes a pool offers representatives instead:

* whole GPUs (:func:`bucket_nodes`): for each count of whole free GPUs that holds the job (the capacity
  index's buckets; fully free nodes of whole racks last), the first nodes whose CPU and memory hold it;
* a share of one GPU (:func:`share_nodes`): for each amount of free milli on an already shared GPU, the first
  node with it, plus the whole-GPU representatives.

:func:`choose` picks among such a handful the node the scorer's ``over`` would pick; for a scorer with a per-node
``terms`` form (kfabric: :func:`~kfabric.sched.single.kfabric_terms`, plain Python, as numpy's per-call cost
dominates at this size) it
remembers each node's terms and compares them in the array form's order of ties.
"""

from __future__ import annotations

from itertools import islice
from math import floor

import numpy as np

from kfabric.sched.capacity import Capacity
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.single import GRID, PRIME, Ask, Choice, Scorer, gpus_on
from kfabric.sched.workload import Workload


def bucket_nodes(cap: Capacity, pool: int, ask: Ask, per_bucket: int, scan: int) -> list[int]:
    """For each count of whole free GPUs that holds the ask, the first ``per_bucket`` nodes whose CPU and
    memory hold it, among the first ``scan`` nodes of that count."""
    cpu_free, mem_free = cap.cpu_free, cap.mem_free
    found: list[int] = []
    for source in (*cap.buckets[pool][max(ask.gpus, 1) :], cap.fresh[pool]):
        taken = 0
        for node in islice(source, scan):
            if cpu_free[node] >= ask.cpu and mem_free[node] >= ask.mem:
                found.append(node)
                taken += 1
                if taken == per_bucket:
                    break
    return found


def share_nodes(cap: Capacity, pool: int, ask: Ask, per_bucket: int, scan: int) -> list[int]:
    """For each amount of free milli on an already shared GPU that holds the share, the lowest node with such a
    GPU whose CPU and memory hold it; then the :func:`bucket_nodes` representatives with a whole free GPU."""
    up, cpu_free, mem_free = cap.up, cap.cpu_free, cap.mem_free
    nodes: list[int] = []
    for free, on in cap.shared[pool].items():
        if free < ask.milli:
            continue
        # nearly always the lowest node holds the host share; otherwise walk them in order
        low = min(on)
        if up[low] and cpu_free[low] >= ask.cpu and mem_free[low] >= ask.mem:
            nodes.append(low)
            continue
        for node in sorted(on):
            if up[node] and cpu_free[node] >= ask.cpu and mem_free[node] >= ask.mem:
                nodes.append(node)
                break
    nodes.sort()
    return list(dict.fromkeys(nodes + bucket_nodes(cap, pool, ask, per_bucket, scan)))


def choose(
    scorer: Scorer, cap: Capacity, nodes: list[int], ask: Ask, workload: Workload, memo: PlacementMemo
) -> Choice:
    """The scorer's choice among a handful of ``nodes`` (non-empty, all holding the ask): ``scorer.over`` on them,
    or, for a scorer with a per-node ``terms`` form (kfabric), its terms remembered per node (``memo.terms``: a
    node's terms depend only on its pool and free resources, and the ask and workload; the representatives of a
    large fleet repeat from job to job) compared in ``over``'s order of ties."""
    if scorer.terms is None:
        return scorer.over(cap, np.array(nodes, dtype=np.int64), ask, workload)
    terms_of, known = scorer.terms, memo.terms
    head = (memo.remember(workload), ask.gpus, ask.milli, ask.cpu, ask.mem)
    salt = ask.salt
    rank = {pi: float(i) for i, pi in enumerate(ask.order)} if len(ask.order) > 1 else {}
    last = float(len(ask.order))
    # per (node, GPU), on the grid: score, pool rank, breaks a whole rack, milli left on the GPU, remaining
    # share; then the node's place in the ask's pseudo-random order, the GPU slot, the node (``single.lexmin``)
    rows: list[tuple[float, float, float, float, float, int, int, int]] = []
    for node in nodes:
        row = cap.milli[node].tolist()
        cpu, mem = cap.cpu_free.item(node), cap.mem_free.item(node)
        pool = cap.node_pool.item(node)
        key = (*head, pool, cpu, mem, *row)  # numbers only: the garbage collector skips such keys
        terms = known.get(key)
        if terms is None:
            terms = known[key] = terms_of(cap, node, [f if f > 0 else 0 for f in row], cpu, mem, ask, workload)
        remaining, per_gpu = terms
        breaks = 0.0
        if cap.whole.item(node) == cap.node_gpus.item(node):
            rack = cap.node_rack.item(node)
            breaks = GRID if cap.rack_full.item(rack) == cap.rack_size.item(rack) else 0.0
        position = floor(rank.get(pool, last) * GRID) if rank else 0.0
        order = (node + 1) * salt % PRIME
        for g, score, left in per_gpu:
            rows.append((score, position, breaks, left, remaining, order, g, node))
    best = min(rows)
    return best[7], gpus_on(cap, best[7], ask, best[6])
