"""The capacity index's numbers, per node, rack, unit, pool and site: the one type that writes them.

Each dynamic fact is kept in up to three copies, for speed:

* a numpy array (the truth for vectorized queries: placement, gangs, the simulator's timeline);
* a memoryview over the same memory, through which the per-change hot path writes one element at a time (an
  element read or written through a memoryview is a plain Python int or float, 2-3x faster than numpy's item
  access; measured: ``a[i] -= x`` 174 ns on an int64 array, 81 ns on its memoryview);
* for what the hot path *reads* per change (the GPU milli rows, whole free GPUs, up/down, fully free nodes per
  rack), a Python list mirror (numpy scalar access costs ~5x a list's).

Only the write methods here (:meth:`NodeColumns.apply`, :meth:`NodeColumns.count`, :meth:`NodeColumns.set_up`)
change any copy, and each changes all of a fact's copies together; everyone else reads. ``Capacity`` keeps the
ordered bucket dicts and the undo log on top.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU

IntArray = npt.NDArray[np.int64]
AnyArray = npt.NDArray[np.int64] | npt.NDArray[np.float64]

#: for a node that became or stopped being fully free: was its rack whole (every node fully free and up) before
#: the change (``WAS_WHOLE``), and is it after (``IS_WHOLE``)? Bits of the int :meth:`NodeColumns.apply` and
#: :meth:`NodeColumns.count` answer (no allocation on the hot path)
WAS_WHOLE, IS_WHOLE = 2, 1
#: :meth:`NodeColumns.apply`'s answer is ``delta_whole << WHOLE_SHIFT | rack bits`` (0: whole free GPUs unchanged)
WHOLE_SHIFT = 2


class _Views:
    """Memoryviews over the arrays that :meth:`NodeColumns.apply` changes one element at a time. Same memory,
    same values; a copy (``copy.deepcopy``) is rebuilt over the copied arrays."""

    def __init__(self, *arrays: AnyArray) -> None:
        self.arrays = arrays
        cpu, mem, node_milli, site_kw, pool_milli, whole, rack_gpus, unit_gpus, rack_full, unit_full, milli = arrays
        self.cpu = _ints(cpu)
        self.mem = _ints(mem)
        self.node_milli = _ints(node_milli)
        self.site_kw = site_kw.data.cast("B").cast("d")
        self.pool_milli = _ints(pool_milli)
        self.whole = _ints(whole)
        self.rack_gpus = _ints(rack_gpus)
        self.unit_gpus = _ints(unit_gpus)
        self.rack_full = _ints(rack_full)
        self.unit_full = _ints(unit_full)
        #: the GPU milli matrix, row after row (``width`` GPUs per row)
        self.milli = _ints(milli.reshape(-1))
        self.width = int(milli.shape[1])

    def __reduce__(self) -> tuple[type[_Views], tuple[AnyArray, ...]]:
        return (_Views, self.arrays)


def _ints(a: AnyArray) -> memoryview:
    """A writable 1-D int64 memoryview over ``a``'s own memory (never a copy)."""
    if a.dtype != np.int64 or a.ndim != 1 or not a.flags.c_contiguous:
        raise ValueError(f"capacity view: expected a contiguous 1-D int64 array, got {a.dtype} {a.shape}")
    return a.data.cast("B").cast("q")


class NodeLayout:
    """Where each node sits (pool, rack, unit), what it has in all, and what each pool's nodes are like: fixed
    for the life of the index (built from the fleet by ``capacity``'s builders)."""

    def __init__(
        self,
        node_pool: IntArray,
        node_rack: IntArray,
        node_unit: IntArray,
        node_gpus: IntArray,
        cpu_total: IntArray,
        mem_total: IntArray,
        racks: int,
        units: int,
        pool_site: list[int],
        pool_kw_per_gpu: list[float],
        n_sites: int,
    ) -> None:
        self.node_pool, self.node_rack, self.node_unit = node_pool, node_rack, node_unit
        self.node_gpus, self.cpu_total, self.mem_total = node_gpus, cpu_total, mem_total
        self.rack_size = np.zeros(racks, dtype=np.int64)
        self.unit_size = np.zeros(units, dtype=np.int64)
        np.add.at(self.rack_size, node_rack, 1)
        np.add.at(self.unit_size, node_unit, 1)
        self.unit_pool = np.zeros(units, dtype=np.int64)
        self.unit_pool[node_unit] = node_pool
        self.pool_site, self.pool_kw_per_gpu, self.n_sites = pool_site, pool_kw_per_gpu, n_sites
        #: GPUs per node of each pool
        self.pool_gpus: list[int] = [0] * len(pool_site)
        for pi, g in zip(node_pool.tolist(), node_gpus.tolist(), strict=True):
            self.pool_gpus[pi] = g


class NodeColumns:
    """The dynamic numbers of the capacity index (see the module doc). Every node starts down.

    :meth:`apply` moves the node's, pool's, site's and (for an up node) its rack's and unit's aggregates by
    deltas. It answers 0 when the node's whole free GPUs did not change, else ``delta << WHOLE_SHIFT`` with the
    rack bits (``WAS_WHOLE``, ``IS_WHOLE``) of the node becoming or stopping being fully free: ``Capacity`` then
    moves the node between its bucket dicts."""

    def __init__(self, layout: NodeLayout) -> None:
        n = len(layout.node_pool)
        racks, units, pools = len(layout.rack_size), len(layout.unit_size), len(layout.pool_site)
        gmax = int(layout.node_gpus.max(initial=0))
        self.milli = np.full((n, max(gmax, 1)), -1, dtype=np.int64)
        self.milli[np.arange(self.milli.shape[1])[None, :] < layout.node_gpus[:, None]] = MILLI_PER_GPU
        self.whole = layout.node_gpus.copy()
        #: free GPU milli per node (its GPUs' milli summed; up or down)
        self.node_milli = layout.node_gpus * MILLI_PER_GPU
        self.cpu_free = layout.cpu_total.copy()
        self.mem_free = layout.mem_total.copy()
        self.up = np.zeros(n, dtype=bool)
        self.rack_full = np.zeros(racks, dtype=np.int64)
        self.unit_full = np.zeros(units, dtype=np.int64)
        self.rack_gpus = np.zeros(racks, dtype=np.int64)
        self.unit_gpus = np.zeros(units, dtype=np.int64)
        self.pool_milli = np.zeros(pools, dtype=np.int64)
        self.pool_up_milli = np.zeros(pools, dtype=np.int64)
        self.site_kw = np.zeros(layout.n_sites, dtype=np.float64)
        self._views = _Views(
            self.cpu_free,
            self.mem_free,
            self.node_milli,
            self.site_kw,
            self.pool_milli,
            self.whole,
            self.rack_gpus,
            self.unit_gpus,
            self.rack_full,
            self.unit_full,
            self.milli,
        )
        # the static facts the hot path reads, as lists
        self.pool_of: list[int] = layout.node_pool.tolist()
        self.rack_of: list[int] = layout.node_rack.tolist()
        self.unit_of: list[int] = layout.node_unit.tolist()
        self.rack_size: list[int] = layout.rack_size.tolist()
        self._pool_gpus = layout.pool_gpus
        self._pool_site = layout.pool_site
        self._pool_kw = layout.pool_kw_per_gpu
        # the list mirrors (read by ``Capacity`` through its read-only queries and by the hot path)
        self.rows: list[list[int]] = self.milli.tolist()
        self.whole_at: list[int] = self.whole.tolist()
        self.up_at: list[bool] = [False] * n
        self.rack_full_at: list[int] = [0] * racks
        #: per pool, GPUs that are partly in use (some but not all of their milli free), by free milli: for each
        #: amount, the nodes with such GPUs and how many (up or down)
        self.shared: list[dict[int, dict[int, int]]] = [{} for _ in range(pools)]

    def mirrors_agree(self) -> bool:
        """Do the list mirrors hold what the arrays hold? (A consistency check for tests.)"""
        return (
            self.rows == self.milli.tolist()
            and self.whole_at == self.whole.tolist()
            and self.up_at == self.up.tolist()
            and self.rack_full_at == self.rack_full.tolist()
        )

    def apply(self, node: int, gpus: tuple[int, ...], milli: int, cpu: int, mem: int) -> int:
        """Take ``milli`` from each of ``gpus`` on ``node`` (negative gives back), with CPU and memory (see the
        class doc for what moves and what the answer says)."""
        row = self.rows[node]
        pi = self.pool_of[node]
        v = self._views
        base = node * v.width
        n = len(gpus)
        if n == self._pool_gpus[pi] and (
            self.whole_at[node] == n if milli == MILLI_PER_GPU else milli == -MILLI_PER_GPU and not any(row[:n])
        ):
            # a whole node taken or given back (most of a gang's shares): every GPU goes from free to used or back
            value = 0 if milli > 0 else MILLI_PER_GPU
            row[:n] = [value] * n
            for g in range(n):
                v.milli[base + g] = value
            delta_whole = -n if milli > 0 else n
        else:
            delta_whole = 0
            shared = self.shared[pi]
            for g in gpus:
                old = row[g]
                new = old - milli
                row[g] = new
                v.milli[base + g] = new
                if old == MILLI_PER_GPU:
                    delta_whole -= 1
                elif new == MILLI_PER_GPU:
                    delta_whole += 1
                if 0 < old < MILLI_PER_GPU:
                    at = shared[old]
                    if at[node] == 1:
                        del at[node]
                        if not at:
                            del shared[old]
                    else:
                        at[node] -= 1
                if 0 < new < MILLI_PER_GPU:
                    at = shared.setdefault(new, {})
                    at[node] = at.get(node, 0) + 1
        v.cpu[node] -= cpu
        v.mem[node] -= mem
        v.node_milli[node] -= milli * n
        v.site_kw[self._pool_site[pi]] += self._pool_kw[pi] * milli * n / MILLI_PER_GPU
        up = self.up_at[node]
        if up:
            v.pool_milli[pi] -= milli * n
        if not delta_whole:
            return 0
        whole_old = self.whole_at[node]
        v.whole[node] = self.whole_at[node] = whole_new = whole_old + delta_whole
        if not up:
            return delta_whole << WHOLE_SHIFT
        rack, unit = self.rack_of[node], self.unit_of[node]
        v.rack_gpus[rack] += delta_whole
        v.unit_gpus[unit] += delta_whole
        g = self._pool_gpus[pi]
        full = whole_old == g or whole_new == g  # became or stopped being fully free
        return delta_whole << WHOLE_SHIFT | (self._count_full(rack, unit, 1 if whole_new == g else -1) if full else 0)

    def count(self, node: int, sign: int, whole: int, full: bool) -> int:
        """Add (sign=+1) or remove (sign=-1) an up node with ``whole`` free GPUs (``full``: all of its GPUs) in
        its rack's and unit's counters (a node coming up or going down; :meth:`apply` counts its own changes).
        For a full node, returns whether its rack was whole before and is whole after (``WAS_WHOLE | IS_WHOLE``
        bits); 0 otherwise."""
        v = self._views
        rack, unit = self.rack_of[node], self.unit_of[node]
        if whole:
            v.rack_gpus[rack] += sign * whole
            v.unit_gpus[unit] += sign * whole
        return self._count_full(rack, unit, sign) if full else 0

    def _count_full(self, rack: int, unit: int, sign: int) -> int:
        """One fully free node more (sign=+1) or fewer in a rack and its unit; the rack bits (``WAS_WHOLE``,
        ``IS_WHOLE``) say whether the rack was and is whole."""
        v = self._views
        size = self.rack_size[rack]
        was = self.rack_full_at[rack] == size
        self.rack_full_at[rack] += sign
        v.rack_full[rack] += sign
        v.unit_full[unit] += sign
        now = self.rack_full_at[rack] == size
        return (WAS_WHOLE if was else 0) | (IS_WHOLE if now else 0)

    def set_up(self, node: int, up: bool) -> None:
        """Mark the node up or down (its GPUs count in its pool's free and online milli only while up)."""
        pi = self.pool_of[node]
        g = self._pool_gpus[pi]
        sign = 1 if up else -1
        self.up[node] = up
        self.up_at[node] = up
        self.pool_milli[pi] += sign * sum(self.rows[node][:g])
        self.pool_up_milli[pi] += sign * g * MILLI_PER_GPU
