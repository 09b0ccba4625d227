"""Preemption steps of a scheduling cycle: choosing victims (cheapest first, never younger than the
minimum run time) and the undoable trial that frees them one by one until the job fits. Pools where the job
cannot fit even with every candidate victim gone are skipped first (a count bound, then one trial)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kfabric.model.decision import Placement, Preemption
from kfabric.model.job import Job, MinTopology, PriorityClass
from kfabric.sched.cycle_state import CycleState, PoolChoice
from kfabric.sched.request import node_counts
from kfabric.sched.snapshot import RunningJob
from kfabric.sched.victims import VICTIM_CANDIDATES, VictimTable


class PreemptionSteps(CycleState):
    def _victim_table(self, pool: int) -> VictimTable:
        table = self._victim_tables.get(pool)
        if table is None:
            table = self._victim_tables[pool] = VictimTable.build(
                self._running_on(pool), self.now, self.snap.attained_gpu_s
            )
        return table

    def _victims(self, job: Job, choices: list[PoolChoice]) -> list[RunningJob]:
        """Preemptible running work the job may displace, cheapest first: borrowed work, then the least work
        lost since the last checkpoint. Jobs younger than the minimum run time are never chosen."""
        pol = self.policy
        picked: list[tuple[bool, float, str, RunningJob]] = []
        need = job.gpu_milli_total
        service = None
        if pol.preempt_by_service:
            thresholds = pol.las_thresholds_gpu_s
            level = int(np.searchsorted(np.asarray(thresholds), self.snap.attained_gpu_s.get(job.id, 0.0), "right"))
            service = (int(job.priority), level, thresholds)
        for c in choices:
            claims = pol.reclaim and self._claims(job, c.pool)
            if not claims and not pol.preempt_by_priority and not pol.preempt_by_service:
                continue
            # cheap bound first: free capacity plus every eligible victim must be able to hold the job
            bound = int(self.cap.pool_milli[c.pool])
            classes = int(job.priority) + 1 if pol.preempt_by_service else int(job.priority)
            if pol.preempt_by_priority or pol.preempt_by_service:
                bound += sum(self.snap.preemptible_milli.get((c.pool, k), 0) for k in range(classes))
            if claims:
                bound += self.snap.borrowed_milli.get(c.pool, 0)
            if bound < need:
                continue
            t = self._victim_table(c.pool)
            below = int(job.priority) if pol.preempt_by_priority else None
            for key in t.candidates(below, claims, self.now, pol.min_run_s, service):
                if key[3].job.id not in self.victims:
                    picked.append(key)
        picked.sort(key=lambda x: x[:3])
        return [x[3] for x in picked[:VICTIM_CANDIDATES]]

    def _try_preempt(self, job: Job, choices: list[PoolChoice]) -> bool:
        """Reclaim (a reservation's owner taking back borrowed capacity) is always tried: the guarantee
        depends on it. Preemption by priority class is bounded to ``max_preemption_attempts`` victim searches
        per cycle."""
        if job.priority == PriorityClass.SCAVENGER:
            return False
        pol = self.policy
        if not pol.preempt_by_priority and not pol.reclaim and not pol.preempt_by_service:
            return False
        claims = pol.reclaim and any(self._claims(job, c.pool) for c in choices)
        if not claims:
            if self.preemption_tries <= 0 or not (pol.preempt_by_priority or pol.preempt_by_service):
                return False
            self.preemption_tries -= 1
        cap = self.cap
        need = job.gpu_milli_total
        victims = self._victims(job, choices)
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
            for s in run.placement.shares:
                cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, True)
            freed.append(run)
            pool = cap.pool_by_name[run.placement.pool].index
            if cap.pool_milli[pool] < need:
                continue
            placed = self._try_place(job, [c for c in choices if c.pool == pool], prefilter=True)
            if placed is None:
                continue
            kept = self._minimize(freed, placed[0])
            for run_v in kept:
                self.victims.add(run_v.job.id)
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
            return True
        cap.rollback(mark)
        for run in freed:
            self._release_early(run, False)
        return False

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
