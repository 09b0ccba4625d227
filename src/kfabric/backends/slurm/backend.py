"""The Slurm backend: realizes kfabric's placements as Slurm batch jobs and reports what Slurm did with them.

One Slurm job per attempt, named ``PREFIX-JOB.ATTEMPT`` (``kf-42.1``) with ``--comment=kfabric:JOB:ATTEMPT``;
the name is the key. ``launch`` submits with the placement's nodes (``--nodelist``), GPUs per node
(``--gres=gpu[:type]:K``), time limit, working directory, output files and environment (flags:
:mod:`kfabric.backends.slurm.submit`). kfabric decides; Slurm executes.

Idempotency. The backend keeps ``(job, attempt) → Slurm job`` in memory. A new instance (a restarted
controller) rebuilds it before its first call from ``squeue`` (jobs Slurm still remembers) and the
completion records (jobcomp file or sacct). An ``sbatch`` that failed or timed out may still have created the
job, so the attempt is marked *uncertain* and a retry looks Slurm over again before submitting: a retry
after a timeout never creates a second Slurm job.

Node health. ``nodes()`` reports every node's state from ``sinfo --json`` (:mod:`kfabric.backends.slurm.nodes`).
``poll`` reads it when the last read is older than ``node_facts_every_s`` or an attempt was newly lost (so a
node failure and the attempts it ended are reported together), and ``nodes()`` returns what it read: the
controller calls ``nodes()`` inside its transaction, where no Slurm command should run.

Concurrency. ``concurrent_launches = True``: the controller may call :meth:`launch_many` from a launcher thread
while it polls and terminates from its own (launches overlap the rest of its loop). Every method holds the
backend's lock while it reads or changes its memory of the attempts; a batch's sbatch commands run outside it,
with their attempts marked uncertain until Slurm's answer is recorded. A read of Slurm holds the lock from its
first command to its conclusions, so an attempt recorded while a read is under way is judged only by a later
read (never called lost by one that began before its sbatch returned).

Faults. Any call that cannot reach slurmctld raises BackendUnavailable and changes nothing; jobs keep
running under slurmd meanwhile. An attempt that Slurm no longer knows at all (neither live nor in the
completion records, e.g. a slurmctld that lost its state) is reported LOST, and kfabric requeues it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kfabric.backends.base import BackendUnavailable, LaunchSpec, NodeFact, RunReport, RunState
from kfabric.backends.identity import Account, account_for, server_is_root
from kfabric.backends.slurm.commands import SlurmCli, SlurmError
from kfabric.backends.slurm.config import SlurmClusterConfig
from kfabric.backends.slurm.discover import gpu_gres
from kfabric.backends.slurm.nodes import NODE_FACTS_EVERY_S, node_facts
from kfabric.backends.slurm.records import JobcompReader, SlurmRecord, from_sacct, from_squeue, run_state
from kfabric.backends.slurm.submit import SbatchRequest, attempt_dir, check_spec, sbatch_request

log = logging.getLogger(__name__)
Key = tuple[str, int]
#: how far back a new instance looks in accounting (sacct) for attempts a previous controller launched
SACCT_LOOKBACK_S = 7 * 86400.0
_TERM = re.compile(r":term@(\d+(?:\.\d+)?)$")


def _int(value: object) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isdigit() else None


@dataclass(slots=True)
class _Attempt:
    job_id: str
    attempt: int
    slurm_id: int
    submitted_at_s: float = 0.0
    #: nodes of the job: a multi-node job runs its command under srun (a job step)
    nodes: int = 1
    record: SlurmRecord | None = None
    #: kfabric asked it to stop; a hard scancel follows at this time (None: not asked)
    kill_at_s: float | None = None
    killed: bool = False
    #: set once final: a final state is never taken back
    lost_message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return bool(self.lost_message) or (self.record is not None and self.record.final)


class SlurmBackend:
    """A kfabric backend driving one Slurm cluster through its command-line tools (see the module docstring)."""

    #: launch_many may run on another thread than poll/terminate (see "Concurrency" above)
    concurrent_launches = True
    #: the controller calls :meth:`forget` for each final attempt once it recorded it: poll's answer (and memory)
    #: stays the size of the live work, not of every attempt since the start
    forget_when_recorded = True

    def __init__(
        self, config: SlurmClusterConfig, clock: Callable[[], float] = time.time, cli: SlurmCli | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.cli = cli or SlurmCli(config.slurm_conf, config.command_timeout_s, config.backoff_max_s, config.bin_dir)
        self._attempts: dict[Key, _Attempt] = {}
        self._uncertain: set[Key] = set()
        self._synced = False
        self._completion = "none"
        self._jobcomp: JobcompReader | None = None
        self._node_types: dict[str, str] = {}
        self._name = re.compile(rf"^{re.escape(config.job_name_prefix)}-(.+)\.(\d+)$")
        #: node facts from the last ``sinfo`` (or why it failed), when read, and the attempts lost by then
        self.node_facts_every_s = NODE_FACTS_EVERY_S
        self._facts: list[NodeFact] = []
        self._facts_error: Exception | None = None
        self._facts_at_s: float | None = None
        self._lost_seen: set[Key] = set()
        self._pool: ThreadPoolExecutor | None = None
        #: when the last complete read of Slurm began (``time.monotonic``); ``poll`` reads again after the interval
        self._read_at = -math.inf
        #: guards the attempts' memory (``_attempts``, ``_uncertain``, reads of Slurm); sbatch runs outside it
        self._lock = threading.RLock()
        #: forgotten attempts (key → Slurm job id): squeue still lists an ended job for MinJobAge; not adopted again
        self._forgotten: dict[Key, int] = {}

    # ------------------------------------------------------------------------------------------- protocol

    def launch(self, spec: LaunchSpec) -> None:
        error = self.launch_many([spec])[0]
        if error is not None:
            raise error

    def launch_many(self, specs: Sequence[LaunchSpec]) -> list[Exception | None]:
        """Launch several attempts, each as :meth:`launch` would, with up to ``submit_parallel`` sbatch commands
        in flight at once. One outcome per spec, in order: None (launched, or launched before) or the exception
        its :meth:`launch` would raise (:class:`BackendUnavailable`: retry later; ``ValueError``/``OSError``:
        refused). Idempotent per attempt as :meth:`launch` is: every attempt is marked uncertain before its
        sbatch runs and stays so unless Slurm's answer (its job id) came back, so a retry reads Slurm first."""
        out: list[Exception | None] = [None] * len(specs)
        with self._lock:
            todo = self._prepare(specs, out)
        results = self._submit_all([r for _, _, r in todo])  # outside the lock: poll and terminate go on meanwhile
        with self._lock:
            for (i, spec, _), result in zip(todo, results, strict=True):
                if isinstance(result, Exception):
                    out[i] = result  # stays uncertain: the job may exist all the same
                    continue
                key = (spec.job_id, spec.attempt)
                self._uncertain.discard(key)
                if key in self._attempts:
                    continue  # a read while sbatch ran found it already (same job: its name is the key)
                outputs = self._outputs(key, result)
                self._attempts[key] = _Attempt(
                    spec.job_id, spec.attempt, result, self.clock(), len(spec.nodes), outputs=outputs
                )
        return out

    def _prepare(
        self, specs: Sequence[LaunchSpec], out: list[Exception | None]
    ) -> list[tuple[int, LaunchSpec, SbatchRequest]]:
        """The sbatch requests of the attempts not launched before, each marked uncertain; refusals in ``out``."""
        ready: list[tuple[int, LaunchSpec]] = []
        for i, spec in enumerate(specs):
            try:
                check_spec(spec)  # ValueError: this spec cannot be run (the controller fails the job)
                ready.append((i, spec))
            except ValueError as exc:
                out[i] = exc
        try:
            self._ensure_synced()
            if any((s.job_id, s.attempt) in self._uncertain and (s.job_id, s.attempt) not in self._attempts
                   for _, s in ready):  # fmt: skip
                self._refresh()  # an earlier sbatch may have created them after all: one read for the batch
        except BackendUnavailable as exc:
            for i, _ in ready:
                out[i] = exc
            return []
        todo: list[tuple[int, LaunchSpec, SbatchRequest]] = []
        keys: set[Key] = set()
        as_root = server_is_root()
        for i, spec in ready:
            key = (spec.job_id, spec.attempt)
            self._uncertain.discard(key)
            if key in self._attempts or key in keys:
                continue  # launched before (maybe by a controller that died since): never twice
            try:
                account = account_for(spec.user or f"of job {spec.job_id}", spec.posix_user)
                request = sbatch_request(self.config, spec, self._gres_type, account, as_root)
                try:
                    self._output_dir(spec, account if as_root else None)
                except OSError as exc:
                    raise BackendUnavailable(f"cannot create the output directory of {spec.key}: {exc}") from exc
            except (ValueError, OSError, BackendUnavailable) as exc:
                out[i] = exc
                continue
            self._uncertain.add(key)
            keys.add(key)
            todo.append((i, spec, request))
        return todo

    def _submit_all(self, requests: Sequence[SbatchRequest]) -> list[int | Exception]:
        """Run one sbatch per request, up to ``submit_parallel`` at once; each one's Slurm job id or exception.
        Once slurmctld is found unreachable the client fails the remaining calls fast (its back-off)."""

        def one(request: SbatchRequest) -> int | Exception:
            try:
                return self.cli.sbatch(request.args, request.script)
            except (BackendUnavailable, ValueError, OSError) as exc:
                return exc

        workers = min(self.config.submit_parallel, len(requests))
        if workers <= 1:
            return [one(r) for r in requests]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.submit_parallel, thread_name_prefix=f"sbatch-{self.name}")
            pool = self._pool
        return list(pool.map(one, requests))

    def close(self) -> None:
        """Stop the submission threads (a backend is usable again afterwards: they start on the next batch)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _output_dir(self, spec: LaunchSpec, owner: Account | None) -> None:
        """``workdir_root`` (made 0711 when kfabric creates it: jobs pass through, list nothing) and the attempt's
        directory, 0700 and owned by the job's account (``owner``) so the job writes its outputs and no other does."""
        root = Path(self.config.workdir_root)
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o711)
        where = attempt_dir(self.config, spec.job_id, spec.attempt)
        where.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(where, owner.uid, owner.gid)
        where.chmod(0o700)

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        with self._lock:
            key = (job_id, attempt)
            self._ensure_synced()
            if key not in self._attempts and key in self._uncertain:
                self._refresh()
            run = self._attempts.get(key)
            if run is None or run.final or run.killed:
                return
            pending = run.record is None or run.record.state == "PENDING"
            if grace_s > 0 and not pending:
                if run.kill_at_s is not None:
                    return  # signalled before: its grace runs from then
                # SIGTERM to the command's processes so it may checkpoint: an srun step's tasks (not srun itself, which
                # would abort the step) for a multi-node job, every process of the batch script otherwise
                steps = self.config.use_srun and run.nodes > 1
                try:
                    self.cli.scancel(run.slurm_id, "TERM", full=not steps)
                except SlurmError as exc:
                    log.info("SIGTERM to Slurm job %s failed (%s); cancelling it now", run.slurm_id, exc)
                else:
                    run.kill_at_s = self.clock() + grace_s
                    with contextlib.suppress(SlurmError, BackendUnavailable):  # lets a restarted controller finish it
                        self.cli.set_comment(run.slurm_id, f"kfabric:{job_id}:{attempt}:term@{run.kill_at_s:.0f}")
                    return
            if run.kill_at_s is None:  # recorded in Slurm first, so a restarted controller still calls it a cancel
                with contextlib.suppress(SlurmError, BackendUnavailable):
                    self.cli.set_comment(run.slurm_id, f"kfabric:{job_id}:{attempt}:term@{self.clock():.0f}")
            self.cli.scancel(run.slurm_id)
            run.kill_at_s = run.kill_at_s if run.kill_at_s is not None else self.clock()
            run.killed = True

    def poll(self) -> list[RunReport]:
        """Every attempt's state. Slurm is read (squeue, then the completion records) when the last read is
        ``poll_interval_s`` old, so a controller ticking faster than that does not pay a read per tick; in between
        the answer comes from memory (launches and terminations since are in it; facts are never made up: an
        attempt is called lost only by a read that began after its sbatch returned)."""
        with self._lock:
            synced_now = not self._synced
            self._ensure_synced()
            if not synced_now and time.monotonic() - self._read_at >= self.config.poll_interval_s:
                self._refresh()
            elif self._jobcomp is not None:
                self._read_completions()
            self._finish_overdue()
            reports = [self._report(key, run) for key, run in sorted(self._attempts.items())]
            lost = {(r.job_id, r.attempt) for r in reports if r.state is RunState.LOST}
            if self._facts_stale() or lost - self._lost_seen:
                self._read_nodes()
            self._lost_seen = lost
            return reports

    def nodes(self) -> list[NodeFact]:
        """Every node's health (``sinfo --json``, see :mod:`kfabric.backends.slurm.nodes`) as of the last read:
        ``poll`` reads it, so that this call runs no Slurm command while it is fresh. BackendUnavailable when the
        last read could not reach slurmctld (or failed otherwise): nothing is known, nothing changes."""
        with self._lock:
            if self._facts_stale():
                self._read_nodes()
            if self._facts_error is not None:
                raise BackendUnavailable(f"node states of Slurm cluster {self.name} unknown: {self._facts_error}")
            return list(self._facts)

    # ------------------------------------------------------------------------------------------- extras

    def slurm_job_id(self, job_id: str, attempt: int) -> int | None:
        """The Slurm job id of an attempt this backend knows (or forgot recently: while squeue still lists it)."""
        with self._lock:
            run = self._attempts.get((job_id, attempt))
            return run.slurm_id if run else self._forgotten.get((job_id, attempt))

    def forget(self, job_id: str, attempt: int) -> bool:
        """Drop a finished attempt from memory (the controller recorded its result); a restarted backend may
        find it again in Slurm's records and report it once more, which the controller ignores."""
        with self._lock:
            run = self._attempts.get((job_id, attempt))
            if run is None or not run.final:
                return False
            del self._attempts[(job_id, attempt)]
            self._forgotten[(job_id, attempt)] = run.slurm_id
            return True

    # ------------------------------------------------------------------------------------------- internals

    def _ensure_synced(self) -> None:
        if self._synced:
            return
        conf = self.cli.config()
        source = self.config.completion
        if source == "auto":
            if conf.get("JobCompType") == "jobcomp/filetxt":
                source = "jobcomp"
            elif "slurmdbd" in conf.get("AccountingStorageType", ""):
                source = "sacct"
            else:
                source = "none"
                log.warning(
                    "Slurm cluster %s keeps no completion records; finished jobs are seen only for MinJobAge=%s",
                    self.name,
                    conf.get("MinJobAge", "?"),
                )
        self._completion = source
        if source == "jobcomp":
            self._jobcomp = JobcompReader(self.config.jobcomp_path or conf.get("JobCompLoc", ""))
        self._refresh(initial=True)
        self._synced = True

    def _refresh(self, initial: bool = False) -> None:
        """Bring every attempt up to date: squeue first, then the completion records (a job that ends between
        the two calls is then found in the records). An unfinished attempt found in neither is LOST."""
        began = time.monotonic()
        live: dict[Key, list[SlurmRecord]] = {}
        still: dict[Key, int] = {}
        for job in self.cli.squeue_rows():
            key = self._key_of(str(job.get("name") or ""))
            if key is None:
                continue
            if self._forgotten.get(key) == _int(job.get("job_id")):
                still[key] = self._forgotten[key]
                continue  # recorded by the controller and forgotten: squeue shows it until MinJobAge passes
            known = self._attempts.get(key)
            if known is not None and known.final and str(known.slurm_id) == str(job.get("job_id")):
                continue  # its end is a fact already (squeue shows ended jobs for MinJobAge): nothing to read
            live.setdefault(key, []).append(from_squeue(job))
        done: dict[Key, list[SlurmRecord]] = {}
        if self._jobcomp is not None:
            for rec in self._jobcomp.read_new():
                key = self._key_of(rec.name)
                if key is not None and self._forgotten.get(key) != rec.slurm_id:
                    done.setdefault(key, []).append(rec)
        if self._completion == "sacct":
            self._from_sacct(live, done, initial)
        self._forgotten = still  # those squeue no longer lists cannot come back from it
        seen = self._take(live, done)
        for key, run in self._attempts.items():
            if not run.final and key not in seen:
                self._lose(run, "is known to Slurm no more (neither queued nor in its completion records)")
        self._read_at = began

    def _take(self, live: dict[Key, list[SlurmRecord]], done: dict[Key, list[SlurmRecord]]) -> set[Key]:
        """Apply records read from Slurm to the attempts (adopting those this backend did not launch or did not
        record yet); the attempts they concern."""
        seen: set[Key] = set()
        for key, recs in [*live.items(), *done.items()]:
            run = self._attempts.get(key)
            if run is None:  # launched by an earlier controller (or by an sbatch we thought had failed): adopt
                best = max(recs, key=lambda r: (not r.final, r.slurm_id))
                outputs = self._outputs(key, best.slurm_id)
                run = _Attempt(key[0], key[1], best.slurm_id, best.submit_s or 0.0, best.node_count, outputs=outputs)
                self._attempts[key] = run
                self._uncertain.discard(key)
            if len(recs) > 1 and recs is live.get(key):
                log.warning("%d Slurm jobs are named %s; following job %s", len(recs), recs[0].name, run.slurm_id)
            mine = [r for r in recs if r.slurm_id == run.slurm_id]
            if mine:
                seen.add(key)
                self._update(run, mine)
        return seen

    def _read_completions(self) -> None:
        """Between full reads: the jobcomp file's new lines (a file read, no slurmctld round trip), so an end is
        seen at the next poll rather than at the next ``squeue``: a GPU is offered again a poll interval sooner
        (benchmarks/bench_slurm_dispatch.py). Ends only: starts and losses wait for the full read."""
        assert self._jobcomp is not None
        done: dict[Key, list[SlurmRecord]] = {}
        for rec in self._jobcomp.read_new():
            key = self._key_of(rec.name)
            if key is not None and self._forgotten.get(key) != rec.slurm_id:
                done.setdefault(key, []).append(rec)
        self._take({}, done)

    def _from_sacct(
        self, live: dict[Key, list[SlurmRecord]], done: dict[Key, list[SlurmRecord]], initial: bool
    ) -> None:
        if initial:
            names: list[str] = []
            since = self.clock() - SACCT_LOOKBACK_S
        else:
            missing = [r for k, r in self._attempts.items() if not r.final and k not in live]
            if not missing:
                return
            names = [self._job_name(r.job_id, r.attempt) for r in missing]
            since = min(r.submitted_at_s or self.clock() for r in missing) - 86400
        for i in range(0, max(1, len(names)), 100):
            for row in self.cli.sacct(names[i : i + 100], since):
                rec = from_sacct(row)
                key = self._key_of(rec.name) if rec else None
                if rec is not None and key is not None and key not in live and rec.final:
                    done.setdefault(key, []).append(rec)

    def _update(self, run: _Attempt, recs: Iterable[SlurmRecord]) -> None:
        for rec in recs:
            if run.final:
                return  # final states are facts: never taken back
            if rec.source == "squeue":
                m = _TERM.search(rec.comment)
                if m and run.kill_at_s is None:  # a previous controller asked it to stop
                    run.kill_at_s = float(m.group(1))
            run.record = rec

    def _lose(self, run: _Attempt, why: str) -> None:
        run.lost_message = f"Slurm job {run.slurm_id} {why}: requeue"
        log.warning("%s.%s: %s", run.job_id, run.attempt, run.lost_message)

    def _finish_overdue(self) -> None:
        now = self.clock()
        for run in self._attempts.values():
            if run.final or run.killed or run.kill_at_s is None or now < run.kill_at_s:
                continue
            try:
                self.cli.scancel(run.slurm_id)
                run.killed = True
            except (BackendUnavailable, SlurmError) as exc:
                log.warning("could not cancel Slurm job %s after its grace: %s", run.slurm_id, exc)
                return

    def _report(self, key: Key, run: _Attempt) -> RunReport:
        rec = run.record
        if run.lost_message:
            state, message = RunState.LOST, run.lost_message
        elif rec is None:
            state, message = RunState.RUNNING, f"Slurm job {run.slurm_id} submitted"
        else:
            state, message = run_state(rec, terminated=run.kill_at_s is not None)
        return RunReport(
            key[0],
            key[1],
            state,
            started_at_s=rec.start_s if rec else None,
            ended_at_s=(rec.end_s if rec and rec.final else None) if not run.lost_message else None,
            exit_code=rec.exit_code if rec and rec.final and not run.lost_message else None,
            message=message,
            outputs=run.outputs,
        )

    def _facts_stale(self) -> bool:
        return self._facts_at_s is None or self.clock() - self._facts_at_s >= self.node_facts_every_s

    def _read_nodes(self) -> None:
        try:
            self._facts, self._facts_error = node_facts(self.cli.sinfo_nodes()), None
        except (BackendUnavailable, SlurmError) as exc:
            self._facts, self._facts_error = [], exc
        self._facts_at_s = self.clock()

    def _key_of(self, name: str) -> Key | None:
        m = self._name.match(name)
        return (m.group(1), int(m.group(2))) if m else None

    def _job_name(self, job_id: str, attempt: int) -> str:
        return f"{self.config.job_name_prefix}-{job_id}.{attempt}"

    def _outputs(self, key: Key, slurm_id: int) -> dict[str, str]:
        where = attempt_dir(self.config, *key)
        return {"stdout": str(where / "stdout"), "stderr": str(where / "stderr"), "slurm_job_id": str(slurm_id)}

    def _gres_type(self, nodes: Iterable[str]) -> str:
        """The GRES type to request on these nodes: the configured one, else the one Slurm reports if they all
        agree ("" = untyped)."""
        if self.config.gres_type:
            return self.config.gres_type
        names = list(nodes)
        if any(n not in self._node_types for n in names):
            self._node_types = {
                str(n["name"]): gpu_gres(str(n.get("gres") or ""))[0] for n in self.cli.sinfo_nodes() if n.get("name")
            }
        types = {self._node_types.get(n, "") for n in names}
        return types.pop() if len(types) == 1 else ""
