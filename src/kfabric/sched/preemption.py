"""The preemptor of a scheduling cycle: :meth:`Preemptor.find` chooses victims for a job that does not fit
(cheapest first, never younger than the minimum run time) and returns a :class:`Plan` (the victims, where the
job goes), or None. A job that fits on one node frees candidates one by one in a trial, after pools where it
cannot fit even with every candidate victim gone are skipped (a count bound, then one trial); a gang frees the
cheapest whole nodes of one domain (``sched.node_victims``) in one trial per pool. A found plan's trial is
committed: its victims are off their GPUs, the job is not placed yet (the cycle admits it)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kfabric.model.decision import Placement
from kfabric.model.job import Job, PriorityClass
from kfabric.sched.cycle_state import Workspace
from kfabric.sched.gangs import domain_nodes
from kfabric.sched.memo import MISS_LIMIT
from kfabric.sched.node_victims import cheapest_nodes, next_freeable
from kfabric.sched.placer import Fit, NoFit, Placer
from kfabric.sched.quota import PoolChoice
from kfabric.sched.request import node_counts
from kfabric.sched.snapshot import RunningJob
from kfabric.sched.trial import Trial
from kfabric.sched.victims import VICTIM_CANDIDATES, VictimRules, VictimTable

__all__ = ["MISS_LIMIT", "Plan", "Preemptor"]


class Plan:
    """A preemption that lets the job start: the victims it displaces (in the order chosen) and where it goes."""

    def __init__(self, victims: list[RunningJob], fit: Fit) -> None:
        self.victims = victims
        self.fit = fit


class Preemptor:
    """Victim search over a cycle's workspace (see the module doc)."""

    def __init__(self, ws: Workspace, placer: Placer) -> None:
        self.ws, self.placer, self.quota = ws, placer, ws.quota
        self.cap, self.snap, self.now, self.policy = ws.cap, ws.snap, ws.now, ws.policy
        modes = ws.modes.preemption
        self.by_priority, self.by_service, self.reclaim = modes.by_priority, modes.by_service, modes.reclaim
        #: victim searches by rank (priority class, attained service) left in this cycle
        self.tries = ws.policy.max_preemption_attempts

    def find(self, job: Job, choices: list[PoolChoice]) -> Plan | None:
        """Reclaim (a reservation's owner taking back borrowed capacity) is always tried: the guarantee
        depends on it. Preemption by priority class or attained service is bounded to
        ``max_preemption_attempts`` victim searches per cycle; past that bound a job that may reclaim still
        searches borrowed work on the pools it may reclaim."""
        if job.priority == PriorityClass.SCAVENGER:
            return None
        if not self.by_priority and not self.reclaim and not self.by_service:
            return None
        claims = self.reclaim and any(self.quota.claims(job, c.pool) for c in choices)
        full = (self.by_priority or self.by_service) and self.tries > 0
        if full:
            self.tries -= 1
        elif not claims:
            return None
        if self._spans_nodes(job, choices):
            return self._by_nodes(job, choices, reclaim_only=not full)
        return self._by_victim(job, choices, reclaim_only=not full)

    def reason(self, job: Job, victim: RunningJob) -> str:
        """Why ``victim`` makes way for ``job`` (the preemption's audited reason)."""
        if victim.borrowed:
            return "quota reclaim"
        if victim.job.priority < job.priority:
            return "higher priority class"
        return "less attained service (least-attained-service queues)"

    # ---- one victim at a time --------------------------------------------------------------------------------
    def _by_victim(self, job: Job, choices: list[PoolChoice], reclaim_only: bool) -> Plan | None:
        """Free candidates cheapest first, on pools where the job can fit once every candidate there is gone,
        until it fits."""
        cap = self.cap
        need = job.gpu_milli_total
        victims = self._hopeful(job, choices, self._victims(job, choices, reclaim_only))
        if not victims:
            return None
        with self.ws.trial() as t:
            for run in victims:
                t.free(run)
                pool = cap.pool_by_name[run.placement.pool].index
                if cap.pool_milli[pool] < need:
                    continue
                placed = self.placer.place(job, [c for c in choices if c.pool == pool], prefilter=True)
                if not isinstance(placed, NoFit):
                    return self._keep(t, placed)
        return None

    def _victims(self, job: Job, choices: list[PoolChoice], reclaim_only: bool) -> list[RunningJob]:
        """Preemptible running work the job may displace, cheapest first: borrowed work, then the least work
        lost since the last checkpoint. Jobs younger than the minimum run time are never chosen.
        ``reclaim_only``: only borrowed work on pools the job may reclaim (no preemption by class or service)."""
        picked: list[tuple[bool, float, str, RunningJob]] = []
        for c in choices:
            # cheap bound first: free capacity plus every eligible victim must be able to hold the job
            if not self._worth_searching(job, c.pool, reclaim_only):
                continue
            claims = self.reclaim and self.quota.claims(job, c.pool)
            t = self.ws.victim_table(c.pool)
            picked.extend(t.candidates(t.allowed(self._victim_rules(job, claims, reclaim_only))))
        picked.sort(key=lambda x: x[:3])
        return [x[3] for x in picked[:VICTIM_CANDIDATES]]

    def _hopeful(self, job: Job, choices: list[PoolChoice], victims: list[RunningJob]) -> list[RunningJob]:
        """The victims on pools where free capacity plus every candidate victim could hold the job, and where
        the job fits once every candidate victim there is gone: freeing less never makes it fit better, so one
        trial per pool spares the per-victim retries of a search that must fail."""
        cap = self.cap
        releasable: dict[int, float] = defaultdict(float)
        for run in victims:
            releasable[cap.pool_by_name[run.placement.pool].index] += run.milli
        need = job.gpu_milli_total
        hopeful = {pi for pi, milli in releasable.items() if cap.pool_milli[pi] + milli >= need}
        for pi in sorted(hopeful):
            mine = [r for r in victims if cap.pool_by_name[r.placement.pool].index == pi]
            if not self._may_fit_without(job, pi, mine) or not self._fits_without(
                job, [c for c in choices if c.pool == pi], mine
            ):
                hopeful.discard(pi)
        return [r for r in victims if cap.pool_by_name[r.placement.pool].index in hopeful]

    def _may_fit_without(self, job: Job, pool: int, runs: list[RunningJob]) -> bool:
        """A necessary condition (counts only, nothing changed) for the job's GPUs to fit the pool with
        ``runs`` gone (``Capacity.shape_fits_without``)."""
        if job.gpus == 0 or job.fractional:
            return True
        cap = self.cap
        counts = node_counts(job, cap.pools[pool].gpus_per_node)
        if counts is None:
            return False
        freed: dict[int, int] = defaultdict(int)
        for run in runs:
            for sh in run.placement.shares:
                freed[sh.node] += len(sh.gpus)
        return cap.shape_fits_without(pool, counts, job.min_topology, freed)

    def _fits_without(self, job: Job, choices: list[PoolChoice], runs: list[RunningJob]) -> bool:
        """Would the job fit ``choices`` with ``runs`` off their GPUs? (A trial, undone before returning.)"""
        with self.ws.trial() as t:
            for run in runs:
                t.free(run)
            return not isinstance(self.placer.place(job, choices, prefilter=True), NoFit)

    # ---- whole nodes (gangs) ---------------------------------------------------------------------------------
    def _spans_nodes(self, job: Job, choices: list[PoolChoice]) -> bool:
        """Does the job need several nodes, whole ones among them, on every pool it may use (so victims are
        chosen by node)? An explicit shape with fewer GPUs per node than the nodes have keeps the search by
        victim, which can free part of a node."""
        if job.gpus == 0 or job.fractional:
            return False
        for c in choices:
            g = self.cap.pools[c.pool].gpus_per_node
            counts = node_counts(job, g)
            if counts is not None and (len(counts) < 2 or counts[0] < g):
                return False
        return True

    def _by_nodes(self, job: Job, choices: list[PoolChoice], reclaim_only: bool) -> Plan | None:
        """A gang's preemption: per pool, the cheapest whole nodes of one domain to free
        (:func:`node_victims.cheapest_nodes`); pools tried cheapest first, one trial each."""
        options: list[tuple[float, int, list[RunningJob]]] = []
        for c in choices:
            option = self._pool_option(job, c.pool, reclaim_only)
            if option is not None:
                options.append(option)
        for _, pool, runs in sorted(options, key=lambda o: (o[0], o[1])):
            with self.ws.trial() as t:
                for run in runs:
                    t.free(run)
                placed = self.placer.place(job, [c for c in choices if c.pool == pool], prefilter=True)
                if not isinstance(placed, NoFit):
                    return self._keep(t, placed)
        return None

    def _pool_option(self, job: Job, pool: int, reclaim_only: bool) -> tuple[float, int, list[RunningJob]] | None:
        """The pool's cheapest whole nodes of one domain to free for the gang: (cost, pool, victims), or None."""
        cap = self.cap
        p = cap.pools[pool]
        counts = node_counts(job, p.gpus_per_node)
        if counts is None or not self._worth_searching(job, pool, reclaim_only):
            return None
        claims = self.reclaim and self.quota.claims(job, pool)
        rules = self._victim_rules(job, claims, reclaim_only)
        span = domain_nodes(p, job.min_topology)
        miss = (pool, rules[:2], rules[3:], span)
        if self._known_miss(pool, miss, len(counts)):
            return None
        table = self.ws.victim_table(pool)
        got = cheapest_nodes(cap, pool, table, table.allowed(rules), len(counts), span)
        if isinstance(got, int):
            self._remember_miss(pool, miss, table, rules, got)
            return None
        cost, idx = got
        if not idx.size:  # no victims: the job did not fit there as it is
            return None
        runs = sorted((table.runs[i] for i in idx.tolist()), key=lambda r: (not r.borrowed, r.job.id))
        return cost, pool, runs

    def _known_miss(self, pool: int, key: tuple[object, ...], count: int) -> bool:
        """Did a gang victim search under the same rules fail on the pool, finding fewer than ``count``
        freeable nodes in any one domain even with every node changed there since becoming freeable, and can no
        node there become freeable by age yet? Then a search for ``count`` nodes fails now
        (``CycleMemo.victim_misses``)."""
        misses = self.ws.memo.victim_misses
        got = misses.get(key)
        if got is None:
            return False
        released, most, until = got
        if pool in self.ws.victims_chosen or self.now >= until:
            del misses[key]
            return False
        return count > most + self.cap.released[pool] - released

    def _remember_miss(
        self, pool: int, key: tuple[object, ...], table: VictimTable, rules: VictimRules, most: int
    ) -> None:
        """Remember a failed gang victim search: the most freeable nodes one domain had (each release on the
        pool frees capacity on one node: at most one more), and the first time a node there could become
        freeable by age or service (nothing is remembered if this cycle chose victims on the pool)."""
        if pool in self.ws.victims_chosen:
            return
        misses = self.ws.memo.victim_misses
        if len(misses) > MISS_LIMIT:
            misses.clear()
        # work placed in this cycle may be displaced once it has run the minimum run time, not before
        when = table.allowed_from(rules)
        until = next_freeable(self.cap, pool, table, when, self.now, self.now + self.policy.min_run_s)
        misses[key] = (self.cap.released[pool], most, until)  # until > now: a node freeable now is not "later"

    # ---- rules and bounds ------------------------------------------------------------------------------------
    def _victim_rules(self, job: Job, claims: bool, reclaim_only: bool) -> VictimRules:
        """The arguments of ``VictimTable.allowed`` for this job on a pool (``claims``: it may reclaim there)."""
        pol = self.policy
        service = None
        if self.by_service and not reclaim_only:
            thresholds = pol.las_thresholds_gpu_s
            level = int(np.searchsorted(np.asarray(thresholds), self.snap.attained_gpu_s.get(job.id, 0.0), "right"))
            service = (int(job.priority), level, thresholds)
        below = int(job.priority) if self.by_priority and not reclaim_only else None
        return below, claims, self.now, pol.min_run_s, service

    def _worth_searching(self, job: Job, pool: int, reclaim_only: bool) -> bool:
        """Could free capacity plus every victim the job may displace in the pool hold it? (Counters only.)"""
        claims = self.reclaim and self.quota.claims(job, pool)
        by_priority = self.by_priority and not reclaim_only
        by_service = self.by_service and not reclaim_only
        if not claims and not by_priority and not by_service:
            return False
        bound = int(self.cap.pool_milli[pool])
        if by_priority or by_service:
            classes = int(job.priority) + 1 if by_service else int(job.priority)
            bound += sum(self.snap.preemptible_milli.get((pool, k), 0) for k in range(classes))
        if claims:
            bound += self.snap.borrowed_milli.get(pool, 0)
        return bound >= job.gpu_milli_total

    # ---- the plan ----------------------------------------------------------------------------------------------
    def _keep(self, t: Trial, fit: Fit) -> Plan:
        """The trial succeeded: give back the victims the placement does not need and commit the rest."""
        plan = Plan(self._minimize(t, fit[0]), fit)
        t.commit()
        return plan

    def _minimize(self, t: Trial, placement: Placement) -> list[RunningJob]:
        """Give back victims freed in trial ``t`` whose GPUs the new placement does not use (most recently
        chosen first); the ones it needs, in the order they were chosen."""
        used = {(s.node, g) for s in placement.shares for g in s.gpus}
        # the new job's host share is not taken yet: a victim given back must leave room for it
        cpu_new: dict[int, int] = defaultdict(int)
        mem_new: dict[int, int] = defaultdict(int)
        for s in placement.shares:
            cpu_new[s.node] += s.cpu_milli
            mem_new[s.node] += s.memory_mib
        cap = self.cap
        kept: list[RunningJob] = []
        for run in list(reversed(t.freed)):  # restoring one takes it off t.freed
            overlap = any((s.node, g) in used for s in run.placement.shares for g in s.gpus)
            host_ok = all(
                cap.cpu_free[s.node] - cpu_new[s.node] >= s.cpu_milli
                and cap.mem_free[s.node] - mem_new[s.node] >= s.memory_mib
                for s in run.placement.shares
            )
            if overlap or not host_ok:
                kept.append(run)
                continue
            t.restore(run)
        return list(reversed(kept))
