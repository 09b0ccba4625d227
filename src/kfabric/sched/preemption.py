"""Preemption steps of a scheduling cycle: choosing victims (cheapest first, never younger than the
minimum run time) and the undoable trial that frees them until the job fits. A job that fits on one node
frees candidates one by one, after pools where it cannot fit even with every candidate victim gone are
skipped (a count bound, then one trial); a gang frees the cheapest whole nodes of one domain
(``sched.node_victims``) in one trial per pool."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kfabric.model.decision import Placement, Preemption
from kfabric.model.job import Job, MinTopology, PriorityClass
from kfabric.sched.cycle_state import CycleState, PoolChoice
from kfabric.sched.gangs import domain_nodes
from kfabric.sched.node_victims import cheapest_nodes, next_freeable
from kfabric.sched.request import node_counts
from kfabric.sched.snapshot import RunningJob
from kfabric.sched.victims import VICTIM_CANDIDATES, VictimTable

#: the arguments of ``VictimTable.allowed`` / ``allowed_from``: below priority, borrowed too, now, min run, service
VictimRules = tuple[int | None, bool, float, float, tuple[int, int, tuple[float, ...]] | None]
#: failed gang victim searches remembered (``Snapshot.victim_misses``) before the memo is emptied
MISS_LIMIT = 10_000


class PreemptionSteps(CycleState):
    def _victims(self, job: Job, choices: list[PoolChoice], reclaim_only: bool = False) -> list[RunningJob]:
        """Preemptible running work the job may displace, cheapest first: borrowed work, then the least work
        lost since the last checkpoint. Jobs younger than the minimum run time are never chosen.
        ``reclaim_only``: only borrowed work on pools the job may reclaim (no preemption by class or service)."""
        pol = self.policy
        picked: list[tuple[bool, float, str, RunningJob]] = []
        for c in choices:
            # cheap bound first: free capacity plus every eligible victim must be able to hold the job
            if not self._worth_searching(job, c.pool, reclaim_only):
                continue
            claims = pol.reclaim and self._claims(job, c.pool)
            t = self._victim_table(c.pool)
            picked.extend(t.candidates(t.allowed(*self._victim_rules(job, claims, reclaim_only))))
        picked.sort(key=lambda x: x[:3])
        return [x[3] for x in picked[:VICTIM_CANDIDATES]]

    def _try_preempt(self, job: Job, choices: list[PoolChoice]) -> bool:
        """Reclaim (a reservation's owner taking back borrowed capacity) is always tried: the guarantee
        depends on it. Preemption by priority class or attained service is bounded to
        ``max_preemption_attempts`` victim searches per cycle; past that bound a job that may reclaim still
        searches borrowed work on the pools it may reclaim."""
        if job.priority == PriorityClass.SCAVENGER:
            return False
        pol = self.policy
        if not pol.preempt_by_priority and not pol.reclaim and not pol.preempt_by_service:
            return False
        claims = pol.reclaim and any(self._claims(job, c.pool) for c in choices)
        full = (pol.preempt_by_priority or pol.preempt_by_service) and self.preemption_tries > 0
        if full:
            self.preemption_tries -= 1
        elif not claims:
            return False
        if self._spans_nodes(job, choices):
            return self._preempt_nodes(job, choices, reclaim_only=not full)
        cap = self.cap
        need = job.gpu_milli_total
        victims = self._victims(job, choices, reclaim_only=not full)
        # only pools where free capacity plus every candidate victim could hold the job are worth a trial
        releasable: dict[int, float] = defaultdict(float)
        for run in victims:
            releasable[cap.pool_by_name[run.placement.pool].index] += run.milli
        hopeful = {pi for pi, milli in releasable.items() if cap.pool_milli[pi] + milli >= need}
        # and only pools where the job fits once every candidate victim there is gone: freeing less never
        # makes it fit better, so one trial per pool spares the per-victim retries of a search that must fail
        for pi in sorted(hopeful):
            mine = [r for r in victims if cap.pool_by_name[r.placement.pool].index == pi]
            if not self._may_fit_without(job, pi, mine) or not self._fits_without(
                job, [c for c in choices if c.pool == pi], mine
            ):
                hopeful.discard(pi)
        victims = [r for r in victims if cap.pool_by_name[r.placement.pool].index in hopeful]
        if not victims:
            return False
        mark = cap.mark()
        freed: list[RunningJob] = []
        for run in victims:
            self._free(run)
            freed.append(run)
            pool = cap.pool_by_name[run.placement.pool].index
            if cap.pool_milli[pool] < need:
                continue
            placed = self._try_place(job, [c for c in choices if c.pool == pool], prefilter=True)
            if placed is not None:
                self._commit(job, freed, placed)
                return True
        self._undo(mark, freed)
        return False

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

    def _preempt_nodes(self, job: Job, choices: list[PoolChoice], reclaim_only: bool) -> bool:
        """A gang's preemption: per pool, the cheapest whole nodes of one domain to free
        (:func:`node_victims.cheapest_nodes`); pools tried cheapest first, one trial each."""
        cap, pol = self.cap, self.policy
        options: list[tuple[float, int, list[RunningJob]]] = []
        for c in choices:
            p = cap.pools[c.pool]
            counts = node_counts(job, p.gpus_per_node)
            if counts is None or not self._worth_searching(job, c.pool, reclaim_only):
                continue
            claims = pol.reclaim and self._claims(job, c.pool)
            rules = self._victim_rules(job, claims, reclaim_only)
            span = domain_nodes(p, job.min_topology)
            miss = (c.pool, rules[:2], rules[3:], span)
            if self._known_miss(c.pool, miss, len(counts)):
                continue
            table = self._victim_table(c.pool)
            got = cheapest_nodes(cap, c.pool, table, table.allowed(*rules), len(counts), span)
            if isinstance(got, int):
                self._remember_miss(c.pool, miss, table, rules, got)
            elif got[1].size:  # no victims: the job did not fit there as it is
                cost, idx = got
                runs = sorted((table.runs[i] for i in idx.tolist()), key=lambda r: (not r.borrowed, r.job.id))
                options.append((cost, c.pool, runs))
        for _, pool, runs in sorted(options, key=lambda o: (o[0], o[1])):
            mark = cap.mark()
            for run in runs:
                self._free(run)
            placed = self._try_place(job, [c for c in choices if c.pool == pool], prefilter=True)
            if placed is not None:
                self._commit(job, runs, placed)
                return True
            self._undo(mark, runs)
        return False

    def _known_miss(self, pool: int, key: tuple[object, ...], count: int) -> bool:
        """Did a gang victim search under the same rules fail on the pool, finding fewer than ``count``
        freeable nodes in any one domain even with every node changed there since becoming freeable, and can no
        node there become freeable by age yet? Then a search for ``count`` nodes fails now
        (``Snapshot.victim_misses``)."""
        got = self.snap.victim_misses.get(key)
        if got is None:
            return False
        released, most, until = got
        if pool in self.victims_chosen or self.now >= until:
            del self.snap.victim_misses[key]
            return False
        return count > most + self.cap.released[pool] - released

    def _remember_miss(
        self,
        pool: int,
        key: tuple[object, ...],
        table: VictimTable,
        rules: VictimRules,
        most: int,
    ) -> None:
        """Remember a failed gang victim search: the most freeable nodes one domain had (each release on the
        pool frees capacity on one node: at most one more), and the first time a node there could become
        freeable by age or service (nothing is remembered if this cycle chose victims on the pool)."""
        if pool in self.victims_chosen:
            return
        misses = self.snap.victim_misses
        if len(misses) > MISS_LIMIT:
            misses.clear()
        # work placed in this cycle may be displaced once it has run the minimum run time, not before
        when = table.allowed_from(*rules)
        until = next_freeable(self.cap, pool, table, when, self.now, self.now + self.policy.min_run_s)
        misses[key] = (self.cap.released[pool], most, until)  # until > now: a node freeable now is not "later"

    def _victim_rules(self, job: Job, claims: bool, reclaim_only: bool) -> VictimRules:
        """The arguments of ``VictimTable.allowed`` for this job on a pool (``claims``: it may reclaim there)."""
        pol = self.policy
        service = None
        if pol.preempt_by_service and not reclaim_only:
            thresholds = pol.las_thresholds_gpu_s
            level = int(np.searchsorted(np.asarray(thresholds), self.snap.attained_gpu_s.get(job.id, 0.0), "right"))
            service = (int(job.priority), level, thresholds)
        below = int(job.priority) if pol.preempt_by_priority and not reclaim_only else None
        return below, claims, self.now, pol.min_run_s, service

    def _worth_searching(self, job: Job, pool: int, reclaim_only: bool) -> bool:
        """Could free capacity plus every victim the job may displace in the pool hold it? (Counters only.)"""
        pol = self.policy
        claims = pol.reclaim and self._claims(job, pool)
        by_priority = pol.preempt_by_priority and not reclaim_only
        by_service = pol.preempt_by_service and not reclaim_only
        if not claims and not by_priority and not by_service:
            return False
        bound = int(self.cap.pool_milli[pool])
        if by_priority or by_service:
            classes = int(job.priority) + 1 if by_service else int(job.priority)
            bound += sum(self.snap.preemptible_milli.get((pool, k), 0) for k in range(classes))
        if claims:
            bound += self.snap.borrowed_milli.get(pool, 0)
        return bound >= job.gpu_milli_total

    def _free(self, run: RunningJob) -> None:
        """Take a (trial) victim off its GPUs."""
        for s in run.placement.shares:
            self.cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        self._release_early(run, True)

    def _undo(self, mark: int, freed: list[RunningJob]) -> None:
        self.cap.rollback(mark)
        for run in freed:
            self._release_early(run, False)

    def _commit(self, job: Job, freed: list[RunningJob], placed: tuple[Placement, PoolChoice]) -> None:
        """The trial succeeded: keep the victims the placement needs, admit the job after the grace period."""
        pol = self.policy
        for run_v in self._minimize(freed, placed[0]):
            pool = self.cap.pool_by_name[run_v.placement.pool].index
            self.victims_chosen.add(pool)
            self._victim_table(pool).take(run_v.job.id)
            self._uncount(run_v)
            self.preemptions.append(
                Preemption(
                    job_id=run_v.job.id,
                    by_job=job.id,
                    reason=self._preemption_reason(job, run_v),
                    grace_s=pol.grace_s,
                )
            )
        self._admit(job, placed[0], placed[1], self.now + pol.grace_s)

    def _may_fit_without(self, job: Job, pool: int, runs: list[RunningJob]) -> bool:
        """A necessary condition (counts only, nothing changed) for the job's GPUs to fit the pool with
        ``runs`` gone: each node's whole free GPUs grow by at most the GPUs the runs hold there; a gang
        limited to one rack or unit needs one with enough fully free nodes."""
        if job.gpus == 0 or job.fractional:
            return True
        cap = self.cap
        p = cap.pools[pool]
        g = p.gpus_per_node
        counts = node_counts(job, g)
        if counts is None:
            return False
        freed: dict[int, int] = defaultdict(int)
        for run in runs:
            for sh in run.placement.shares:
                freed[sh.node] += len(sh.gpus)
        whole, up = cap._whole, cap._up
        buckets = cap.buckets[pool]
        full = len(cap.fresh[pool]) + len(buckets[g])
        smallest = counts[-1]
        enough = full + sum(len(buckets[w]) for w in range(smallest, g))
        rack_gain: dict[int, int] = defaultdict(int)
        unit_gain: dict[int, int] = defaultdict(int)
        for node, n in freed.items():
            if not up[node]:
                continue
            before = whole[node]
            after = min(g, before + n)
            if before < g <= after:
                full += 1
                rack_gain[cap._rack_of[node]] += 1
                unit_gain[cap._unit_of[node]] += 1
            if before < smallest <= after:
                enough += 1
        if full < counts.count(g) or enough < len(counts):
            return False
        need_full = counts.count(g)
        if len(counts) == 1 or need_full == 0:
            return True
        if job.min_topology == MinTopology.RACK:
            counters, first, gain = cap.rack_full[p.first_rack : p.first_rack + p.racks], p.first_rack, rack_gain
        elif job.min_topology == MinTopology.UNIT:
            counters, first, gain = cap.unit_full[p.first_unit : p.first_unit + p.units], p.first_unit, unit_gain
        else:
            return True
        best = int(counters.max()) if counters.size else 0
        for domain, n in gain.items():
            best = max(best, int(counters[domain - first]) + n)
        return best >= need_full

    def _fits_without(self, job: Job, choices: list[PoolChoice], runs: list[RunningJob]) -> bool:
        """Would the job fit ``choices`` with ``runs`` off their GPUs? (A trial, undone before returning; the
        bound flags are left as they were.)"""
        cap = self.cap
        mark = cap.mark()
        for run in runs:
            for s in run.placement.shares:
                cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, True)
        bound = self._job_bound, self._profile_bound, self._other_bound
        try:
            return self._try_place(job, choices, prefilter=True) is not None
        finally:
            self._job_bound, self._profile_bound, self._other_bound = bound
            cap.rollback(mark)
            for run in runs:
                self._release_early(run, False)

    def _preemption_reason(self, job: Job, victim: RunningJob) -> str:
        if victim.borrowed:
            return "quota reclaim"
        if victim.job.priority < job.priority:
            return "higher priority class"
        return "less attained service (least-attained-service queues)"

    def _minimize(self, freed: list[RunningJob], placement: Placement) -> list[RunningJob]:
        """Give back victims whose GPUs the new placement does not use (most recently chosen first)."""
        used = {(s.node, g) for s in placement.shares for g in s.gpus}
        # the new job's host share is not taken yet: a victim given back must leave room for it
        cpu_new: dict[int, int] = defaultdict(int)
        mem_new: dict[int, int] = defaultdict(int)
        for s in placement.shares:
            cpu_new[s.node] += s.cpu_milli
            mem_new[s.node] += s.memory_mib
        cap = self.cap
        kept: list[RunningJob] = []
        for run in reversed(freed):
            overlap = any((s.node, g) in used for s in run.placement.shares for g in s.gpus)
            host_ok = all(
                cap.cpu_free[s.node] - cpu_new[s.node] >= s.cpu_milli
                and cap.mem_free[s.node] - mem_new[s.node] >= s.memory_mib
                for s in run.placement.shares
            )
            if overlap or not host_ok:
                kept.append(run)
                continue
            for s in run.placement.shares:
                cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, False)
        return list(reversed(kept))
