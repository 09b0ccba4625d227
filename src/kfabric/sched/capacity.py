"""The capacity index: free GPUs, GPU milli, CPU and memory per node, aggregated up the topology tree.

Struct-of-arrays (numpy, with their list mirrors and memoryviews owned and written only by
``sched.node_columns.NodeColumns``; read here and elsewhere) built once from the fleet by the builders below; a
job start or end touches a handful of entries. Every change is written to an undo log, so a scheduling cycle can
try things ("what if these are preempted?") and roll back to a mark for free (``sched.trial`` wraps it).
Indexes kept up to date on every change:

* per node: whole free GPUs, free milli per GPU and in all, CPU, memory, up/down;
* per pool: nodes bucketed by whole free GPUs (ordered dicts: deterministic first-in order), with fully free
  nodes split by whether their rack is still whole, so small jobs fill broken racks first;
* per rack and scalable unit: fully free nodes and whole free GPUs;
* per pool: free milli; per site: power drawn by allocated GPUs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kfabric.model.fleet import Fleet, Sharing
from kfabric.model.job import MILLI_PER_GPU, MinTopology
from kfabric.model.sovereignty import Classification
from kfabric.sched.node_columns import IS_WHOLE, WAS_WHOLE, WHOLE_SHIFT, NodeColumns, NodeLayout

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class PoolInfo:
    index: int
    name: str
    model: str
    su_weight: float
    site: int
    cluster: str
    owner: str
    sharing: Sharing
    first_node: int
    nodes: int
    gpus_per_node: int
    nodes_per_rack: int
    racks_per_unit: int
    nodes_per_domain: int
    domain_gpus: int
    first_rack: int
    racks: int
    first_unit: int
    units: int
    kw_per_gpu: float
    #: training speed of the pool's GPU model against H100 (``GpuModel.relative_speed``; placement.prefer_pools)
    speed: float = 1.0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def node_range(self) -> range:
        return range(self.first_node, self.first_node + self.nodes)


@dataclass(frozen=True, slots=True)
class SiteInfo:
    index: int
    name: str
    certification: str
    clearance: Classification
    cap_kw: float


def _pool_infos(fleet: Fleet) -> tuple[PoolInfo, ...]:
    """The fleet's pools, with their first node, rack and unit numbered consecutively in fleet order."""
    sites = {s.name: i for i, s in enumerate(fleet.sites)}
    pools: list[PoolInfo] = []
    node, rack, unit = 0, 0, 0
    for i, p in enumerate(fleet.pools):
        racks = -(-p.nodes // p.nodes_per_rack)
        units = -(-racks // p.racks_per_unit)
        model = fleet.model(p.gpu_model)
        pools.append(
            PoolInfo(
                index=i,
                name=p.name,
                model=p.gpu_model,
                su_weight=model.su_weight,
                site=sites[fleet.cluster(p.cluster).site],
                cluster=p.cluster,
                owner=p.owner,
                sharing=p.sharing,
                first_node=node,
                nodes=p.nodes,
                gpus_per_node=p.gpus_per_node,
                nodes_per_rack=p.nodes_per_rack,
                racks_per_unit=p.racks_per_unit,
                nodes_per_domain=p.nodes_per_domain,
                domain_gpus=min(p.nvlink_domain_gpus, max(p.gpus_per_node, 1) * p.nodes_per_domain),
                first_rack=rack,
                racks=racks,
                first_unit=unit,
                units=units,
                kw_per_gpu=p.node_power_kw / max(p.gpus_per_node, 1),
                speed=model.relative_speed,
            )
        )
        node, rack, unit = node + p.nodes, rack + racks, unit + units
    return tuple(pools)


def _layout(fleet: Fleet, pools: tuple[PoolInfo, ...], n_sites: int) -> NodeLayout:
    """Each node's pool, rack, unit, GPUs, CPU and memory (fixed for the life of the index)."""
    n = sum(p.nodes for p in pools)
    node_pool, node_rack, node_unit = (np.empty(n, dtype=np.int64) for _ in range(3))
    node_gpus, cpu_total, mem_total = (np.empty(n, dtype=np.int64) for _ in range(3))
    for info, fp in zip(pools, fleet.pools, strict=True):
        sl = slice(info.first_node, info.first_node + info.nodes)
        local = np.arange(info.nodes)
        node_pool[sl] = info.index
        node_rack[sl] = info.first_rack + local // info.nodes_per_rack
        node_unit[sl] = info.first_unit + (local // info.nodes_per_rack) // info.racks_per_unit
        node_gpus[sl] = info.gpus_per_node
        cpu_total[sl] = fp.cpu_milli_per_node
        mem_total[sl] = fp.memory_mib_per_node
    return NodeLayout(
        node_pool,
        node_rack,
        node_unit,
        node_gpus,
        cpu_total,
        mem_total,
        racks=sum(p.racks for p in pools),
        units=sum(p.units for p in pools),
        pool_site=[p.site for p in pools],
        pool_kw_per_gpu=[p.kw_per_gpu for p in pools],
        n_sites=n_sites,
    )


class Capacity:
    """Mutable capacity state with an undo log. Not thread-safe; one cycle at a time."""

    def __init__(self, fleet: Fleet) -> None:
        self.sites = tuple(
            SiteInfo(i, s.name, s.certification, s.clearance, s.power_cap_mw * 1000.0)
            for i, s in enumerate(fleet.sites)
        )
        self.pools = pools = _pool_infos(fleet)
        self.pool_by_name = {p.name: p for p in pools}
        layout = _layout(fleet, pools, len(self.sites))
        self._init_static(layout)
        self._init_columns(NodeColumns(layout))
        self._init_indexes()

    def _init_static(self, layout: NodeLayout) -> None:
        """Where each node sits and what it has in all (numpy; read by vectorized queries)."""
        self.n_nodes = len(layout.node_pool)
        self.gmax = max((p.gpus_per_node for p in self.pools), default=0)
        self.node_pool, self.node_rack, self.node_unit = layout.node_pool, layout.node_rack, layout.node_unit
        self.node_gpus, self.cpu_total, self.mem_total = layout.node_gpus, layout.cpu_total, layout.mem_total
        self.rack_size, self.unit_size, self.unit_pool = layout.rack_size, layout.unit_size, layout.unit_pool
        #: the fleet's GPU model names (sorted) and each node's index into them (what model-aware scores read)
        self.gpu_models = tuple(sorted({p.model for p in self.pools}))
        index = {m: i for i, m in enumerate(self.gpu_models)}
        pool_model = np.array([index[p.model] for p in self.pools] or [0], dtype=np.int64)
        self.node_model: IntArray = pool_model[self.node_pool]

    def _init_columns(self, cols: NodeColumns) -> None:
        """The dynamic numbers: read here as numpy arrays (written only by ``cols``, see ``sched.node_columns``)."""
        self._cols = cols
        self.milli, self.whole, self.node_milli = cols.milli, cols.whole, cols.node_milli
        self.cpu_free, self.mem_free, self.up = cols.cpu_free, cols.mem_free, cols.up
        self.rack_full, self.unit_full = cols.rack_full, cols.unit_full
        self.rack_gpus, self.unit_gpus = cols.rack_gpus, cols.unit_gpus
        self.pool_milli, self.pool_up_milli, self.site_kw = cols.pool_milli, cols.pool_up_milli, cols.site_kw
        self.shared = cols.shared
        # the list mirrors the hot path reads (the same lists ``cols`` writes; never written here)
        self._pool_of, self._rack_of, self._whole, self._up = cols.pool_of, cols.rack_of, cols.whole_at, cols.up_at

    def _init_indexes(self) -> None:
        """The ordered bucket dicts, the undo log and the per-pool release counts."""
        pools = self.pools
        self.buckets: list[list[dict[int, None]]] = [[{} for _ in range(q.gpus_per_node + 1)] for q in pools]
        self.fresh: list[dict[int, None]] = [{} for _ in pools]
        self._log: list[tuple[int, int, tuple[int, ...], int, int, int]] = []
        self.logging = False
        #: per pool, how often capacity there was released for good (work ended, a node came up), one count per
        #: node changed: while the count stands, nothing in the pool became free, and n counts changed at most n
        #: nodes (trials undone by a rollback do not count)
        self.released: list[int] = [0] * len(pools)
        # bucket order is part of the state (best fit takes the first node in a bucket), so a rollback puts
        # every dict back in its order: a dict's keys are saved on its first change after each mark
        self._orders: list[tuple[int, dict[int, None], list[int]]] = []
        self._order_epoch = 0
        self._order_saved: dict[int, int] = {}

    # ---- queries -------------------------------------------------------------------------------------------
    def node_full(self, node: int) -> bool:
        return self._up[node] and self._whole[node] == self.pools[self._pool_of[node]].gpus_per_node

    def node_whole(self, node: int) -> int:
        """Whole free GPUs on the node (up or down)."""
        return self._whole[node]

    def node_up(self, node: int) -> bool:
        return self._up[node]

    def rack_of(self, node: int) -> int:
        return self._rack_of[node]

    def unit_of(self, node: int) -> int:
        return self._cols.unit_of[node]

    def rack_whole(self, rack: int) -> bool:
        cols = self._cols
        return cols.rack_full_at[rack] == cols.rack_size[rack]

    def mirrors_agree(self) -> bool:
        """Do the hot path's list mirrors hold what the arrays hold? (A consistency check for tests.)"""
        return self._cols.mirrors_agree()

    def shape_fits(self, pool: int, counts: list[int]) -> bool:
        """A necessary condition for nodes with ``counts`` whole free GPUs each (largest first) to fit the pool
        now, from the free-GPU buckets: enough up nodes with enough whole free GPUs for each."""
        g = self.pools[pool].gpus_per_node
        buckets = self.buckets[pool]
        full = len(self.fresh[pool]) + len(buckets[g])
        if full >= len(counts):
            return True
        smallest = counts[-1]
        if smallest == g or full < counts.count(g):
            return False
        return full + sum(len(buckets[w]) for w in range(smallest, g)) >= len(counts)

    def shape_fits_without(self, pool: int, counts: list[int], level: MinTopology, freed: dict[int, int]) -> bool:
        """:meth:`shape_fits` with ``freed[node]`` more GPUs free on some nodes (counts only, nothing changed):
        each node's whole free GPUs grow by at most that many; a gang limited to one rack or unit (``level``)
        needs one with enough fully free nodes."""
        p = self.pools[pool]
        g = p.gpus_per_node
        buckets = self.buckets[pool]
        full = len(self.fresh[pool]) + len(buckets[g])
        smallest = counts[-1]
        enough = full + sum(len(buckets[w]) for w in range(smallest, g))
        whole, up, rack_of, unit_of = self._whole, self._up, self._rack_of, self._cols.unit_of
        rack_gain: dict[int, int] = defaultdict(int)
        unit_gain: dict[int, int] = defaultdict(int)
        for node, n in freed.items():
            if not up[node]:
                continue
            before = whole[node]
            after = min(g, before + n)
            if before < g <= after:
                full += 1
                rack_gain[rack_of[node]] += 1
                unit_gain[unit_of[node]] += 1
            if before < smallest <= after:
                enough += 1
        need_full = counts.count(g)
        if full < need_full or enough < len(counts):
            return False
        if len(counts) == 1 or need_full == 0:
            return True
        if level == MinTopology.RACK:
            counters, first, gain = self.rack_full[p.first_rack : p.first_rack + p.racks], p.first_rack, rack_gain
        elif level == MinTopology.UNIT:
            counters, first, gain = self.unit_full[p.first_unit : p.first_unit + p.units], p.first_unit, unit_gain
        else:
            return True
        best = int(counters.max()) if counters.size else 0
        for domain, n in gain.items():
            best = max(best, int(counters[domain - first]) + n)
        return best >= need_full

    def free_gpus_on(self, node: int) -> list[int]:
        """Indices of the node's GPUs that are entirely free, lowest first."""
        row = self._cols.rows[node]
        return [g for g in range(self.pools[self._pool_of[node]].gpus_per_node) if row[g] == MILLI_PER_GPU]

    def node_name(self, node: int) -> str:
        p = self.pools[int(self.node_pool[node])]
        return f"{p.name}-n{node - p.first_node:05d}"

    # ---- changes (logged) ----------------------------------------------------------------------------------
    def mark(self) -> int:
        self._order_epoch += 1
        return len(self._log)

    def rollback(self, mark: int) -> None:
        while len(self._log) > mark:
            op, node, gpus, milli, cpu, mem = self._log.pop()
            was = self.logging
            self.logging = False
            if op == _TAKE:
                self._apply(node, gpus, -milli, -cpu, -mem)
                self.released[self._pool_of[node]] += 1
            elif op == _GIVE:
                self._apply(node, gpus, milli, cpu, mem)
            else:
                self.set_up(node, op == _DOWN)
            self.logging = was
        # each dict goes back to the order it had at its first change after the mark (the earliest save)
        earliest: dict[int, tuple[dict[int, None], list[int]]] = {}
        while self._orders and self._orders[-1][0] >= mark:
            _, bucket, keys = self._orders.pop()
            earliest[id(bucket)] = (bucket, keys)
            self._order_saved.pop(id(bucket), None)
        for bucket, keys in earliest.values():
            bucket.clear()
            bucket.update(dict.fromkeys(keys))

    def forget(self) -> None:
        """Make every logged change permanent."""
        for op, node, *_ in self._log:
            if op == _GIVE:
                self.released[self._pool_of[node]] += 1
        self._log.clear()
        self._orders.clear()
        self._order_saved.clear()

    def take(self, node: int, gpus: tuple[int, ...], milli: int, cpu: int, mem: int) -> None:
        changed = self._cols.apply(node, gpus, milli, cpu, mem)
        if changed and self._up[node]:
            self._rebucket(node, changed)
        if self.logging:
            self._log.append((_TAKE, node, gpus, milli, cpu, mem))

    def give(self, node: int, gpus: tuple[int, ...], milli: int, cpu: int, mem: int) -> None:
        changed = self._cols.apply(node, gpus, -milli, -cpu, -mem)
        if changed and self._up[node]:
            self._rebucket(node, changed)
        if self.logging:
            self._log.append((_GIVE, node, gpus, milli, cpu, mem))
        else:
            self.released[self._pool_of[node]] += 1

    def set_up(self, node: int, up: bool) -> None:
        if self._up[node] == up:
            return
        if not up:
            self._count(node, -1, self._whole[node])
        self._cols.set_up(node, up)
        if up:
            self._count(node, +1, self._whole[node])
            self.released[self._pool_of[node]] += 1
        if self.logging:
            self._log.append((_UP if up else _DOWN, node, (), 0, 0, 0))

    def set_pool_online(self, pool: int, online: bool) -> None:
        for node in self.pools[pool].node_range:
            self.set_up(node, online)

    def _apply(self, node: int, gpus: tuple[int, ...], milli: int, cpu: int, mem: int) -> None:
        """Take ``milli`` from each of ``gpus`` on ``node`` (negative gives back). Aggregates move by deltas
        (``NodeColumns.apply``); an up node moves between bucket dicts only when its whole free GPUs change."""
        changed = self._cols.apply(node, gpus, milli, cpu, mem)
        if changed and self._up[node]:
            self._rebucket(node, changed)

    def _rebucket(self, node: int, changed: int) -> None:
        """Move an up node whose whole free GPUs changed (``NodeColumns.apply``'s answer) between its pool's
        bucket dicts; a rack that broke or became whole moves its other fully free nodes too."""
        pi = self._pool_of[node]
        p = self.pools[pi]
        g = p.gpus_per_node
        new = self._whole[node]
        old = new - (changed >> WHOLE_SHIFT)
        buckets = self.buckets[pi]
        src = buckets[old] if old != g else self.fresh[pi] if changed & WAS_WHOLE else buckets[g]
        if self.logging:
            self._save_order(src)
        del src[node]
        if old == g and changed & WAS_WHOLE and not changed & IS_WHOLE:
            self._move_rack(p, self._rack_of[node], node, to_fresh=False)
        dst = buckets[new] if new != g else self.fresh[pi] if changed & IS_WHOLE else buckets[g]
        if self.logging:
            self._save_order(dst)
        dst[node] = None
        if new == g and changed & IS_WHOLE and not changed & WAS_WHOLE:
            self._move_rack(p, self._rack_of[node], node, to_fresh=True)

    def _save_order(self, bucket: dict[int, None]) -> None:
        """Remember a dict's order before its first change after the latest mark (see :meth:`rollback`)."""
        if self.logging and self._order_saved.get(id(bucket)) != self._order_epoch:
            self._order_saved[id(bucket)] = self._order_epoch
            self._orders.append((len(self._log), bucket, list(bucket)))

    def _count(self, node: int, sign: int, whole: int) -> None:
        """Add (sign=+1) or remove (sign=-1) an up node with ``whole`` free GPUs from the buckets and the
        rack/unit counters."""
        pi = self._pool_of[node]
        p = self.pools[pi]
        full = whole == p.gpus_per_node
        racks = self._cols.count(node, sign, whole, full)
        rack_was_whole = racks & WAS_WHOLE != 0
        rack_is_whole = racks & IS_WHOLE != 0
        in_fresh = full and (rack_is_whole if sign > 0 else rack_was_whole)
        target = self.fresh[pi] if in_fresh else self.buckets[pi][whole]
        if self.logging:
            self._save_order(target)
        if sign > 0:
            target[node] = None
        else:
            del target[node]
        if rack_was_whole != rack_is_whole:
            self._move_rack(p, self._rack_of[node], node, to_fresh=rack_is_whole)

    def _move_rack(self, p: PoolInfo, rack: int, skip: int, to_fresh: bool) -> None:
        """A rack became whole (or stopped being whole): move its other fully free nodes between dicts."""
        full_bucket = self.buckets[p.index][p.gpus_per_node]
        src, dst = (full_bucket, self.fresh[p.index]) if to_fresh else (self.fresh[p.index], full_bucket)
        self._save_order(src)
        self._save_order(dst)
        start = p.first_node + (rack - p.first_rack) * p.nodes_per_rack
        for n in range(start, min(start + p.nodes_per_rack, p.first_node + p.nodes)):
            if n != skip and n in src:
                del src[n]
                dst[n] = None


_TAKE, _GIVE, _UP, _DOWN = 0, 1, 2, 3
