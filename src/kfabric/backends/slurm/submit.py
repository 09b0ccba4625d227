"""How a kfabric placement becomes an ``sbatch`` call.

=====================================  =================================================================
kfabric                                sbatch
=====================================  =================================================================
attempt ``JOB.ATTEMPT``                ``--job-name=kf-JOB.ATTEMPT --comment=kfabric:JOB:ATTEMPT``
placement nodes                        ``--nodelist=a,b --nodes=2 --ntasks-per-node=1``
K GPUs on every node                   ``--gres=gpu[:TYPE]:K`` (TYPE: config ``gres_type`` or Slurm's)
uneven GPUs per node (8 + 4)           ``--gpus=[TYPE:]12`` (Slurm splits them over the listed nodes)
fractional GPU (gpu_milli < 1000)      one whole GPU per GPU index (``fractional: whole``)
CPUs / memory per node                 ``--cpus-per-task=ceil(cpu_milli/1000)``, ``--mem=MIBM``
time limit                             ``--time=ceil(seconds / 60)`` minutes (Slurm counts minutes)
the user's POSIX account               ``--uid=UID --gid=GID`` when kfabric runs as root (Slurm then also
                                       loads the account's login environment); otherwise the job is the
                                       service account's, and only users mapped to it may run
working directory                      ``--chdir`` (the spec's, else ``workdir_root/JOB.ATTEMPT``)
outputs                                ``--output/--error`` = the job's ``-o``/``-e`` files, resolved by
                                       kfabric (``%`` escaped as ``%%``: Slurm's ``%j`` would be its own id;
                                       no ``--error`` when both are one file); ``--open-mode=append`` when
                                       asked. A spec without output paths: ``workdir_root/JOB.ATTEMPT/
                                       std{out,err}``, in a directory of the job's account (0700)
environment                            ``--export=KFABRIC_JOB_ID=..,KFABRIC_ATTEMPT=..`` (never ``ALL``: the
                                       service's environment stays out) + ``export`` lines in the script
                                       for the allow-list and the job's own variables
                                       (``backends/identity.py``; values may hold commas, which
                                       ``--export`` cannot carry)
Slurm's own requeue                    ``--no-requeue``: kfabric requeues (a LOST attempt)
=====================================  =================================================================

A job with a stored script (``LaunchSpec.script``) runs that copy, never a file on disk: the batch script carries it
in a quoted here-document (its delimiter derived from the script's SHA-256, so the script cannot end it early) and
runs it with its ``#!`` interpreter (default ``/bin/bash``) from ``/dev/fd/3``, once, on the first node, as sbatch
runs a batch script (it starts its own ``srun``). The script's environment is kfabric's (below), except
``SLURM_JOB_ID``, which stays Slurm's (``srun`` finds its allocation by it); ``KFABRIC_JOB_ID`` is kfabric's id.

A one-node job's batch script runs the command itself. A multi-node job's runs it on every node of the gang
(``srun``, one task per node), all of a gang's GPUs starting together as one Slurm job; with
``use_srun: false`` it runs once, on the first node (the command starts its own ``srun``/``mpirun``).
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kfabric.backends.base import LaunchSpec
from kfabric.backends.identity import Account, job_env
from kfabric.backends.slurm.config import SlurmClusterConfig

_JOB_ID = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,99}$")
_NODE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class SbatchRequest:
    args: list[str]
    script: str


def attempt_dir(config: SlurmClusterConfig, job_id: str, attempt: int) -> Path:
    return Path(config.workdir_root) / f"{job_id}.{attempt}"


def job_name(config: SlurmClusterConfig, job_id: str, attempt: int) -> str:
    return f"{config.job_name_prefix}-{job_id}.{attempt}"


def check_spec(spec: LaunchSpec) -> None:
    """ValueError when the spec cannot become a Slurm job (bad job id, node names, time limit, env)."""
    if not _JOB_ID.match(spec.job_id):
        raise ValueError(f"job id {spec.job_id!r} cannot name a Slurm job (letters, digits, '_', '.', '+', '-')")
    if spec.attempt < 0:
        raise ValueError(f"attempt {spec.attempt} of job {spec.job_id!r} is negative")
    if not spec.nodes:
        raise ValueError(f"attempt {spec.key} names no nodes")
    names = [p.node for p in spec.nodes]
    bad = [n for n in names if not _NODE.match(n)]
    if bad:
        raise ValueError(f"attempt {spec.key}: {bad} are not Slurm node names")
    if len(set(names)) != len(names):
        raise ValueError(f"attempt {spec.key} names a node twice: {names}")
    if not spec.time_limit_s > 0:
        raise ValueError(f"attempt {spec.key} has time limit {spec.time_limit_s}; Slurm needs one > 0")
    bad_env = [k for k, _ in spec.env if not _ENV_NAME.match(k)]
    if bad_env:
        raise ValueError(f"attempt {spec.key}: {bad_env} are not environment variable names")


def _gpu_flag(spec: LaunchSpec, gres_type: Callable[[Iterable[str]], str]) -> list[str]:
    per_node = [len(set(p.gpus)) for p in spec.nodes]
    if not any(per_node):
        return []
    gtype = gres_type([p.node for p in spec.nodes])
    typed = f"{gtype}:" if gtype else ""
    if len(set(per_node)) == 1:
        return [f"--gres=gpu:{typed}{per_node[0]}"]
    return [f"--gpus={typed}{sum(per_node)}"]


#: a multi-node job's batch script retries srun this many times, this many seconds apart, while the step cannot
#: be created (srun needs slurmctld to start a step: a job that starts while slurmctld is down would fail)
STEP_RETRIES = 30
STEP_RETRY_S = 10


#: variables Slurm sets that the batch script never overrides (``srun`` inside the job finds its allocation by them)
SLURM_OWN = ("SLURM_JOB_ID", "SLURM_JOBID")


def _job_env(spec: LaunchSpec, account: Account | None) -> list[tuple[str, str]]:
    """The variables the script exports: the allow-list and the declared ones (only those without an account)."""
    declared = [(k, v) for k, v in spec.env if k not in SLURM_OWN]
    if account is None:
        return declared
    ids = {"KFABRIC_JOB_ID": spec.job_id, "KFABRIC_ATTEMPT": str(spec.attempt)}
    return sorted(job_env(account, declared, ids).items())


def interpreter_of(script: str) -> list[str]:
    """The interpreter (and its one argument, as Linux reads a ``#!`` line) of a stored script; default bash."""
    first = script.split("\n", 1)[0]
    if not first.startswith("#!") or not first[2:].strip():
        return ["/bin/bash"]
    return first[2:].strip().split(None, 1)


def _script_lines(script: str) -> list[str]:
    """Run the stored ``script`` from a quoted here-document on descriptor 3 (nothing written to disk)."""
    body = script if script.endswith("\n") else script + "\n"
    mark = f"KFABRIC_SCRIPT_{hashlib.sha256(body.encode()).hexdigest()[:24]}"
    run = " ".join(shlex.quote(part) for part in interpreter_of(script))
    return [f"exec {run} /dev/fd/3 3<<'{mark}'", body + mark]


def slurm_path(path: str) -> str:
    """``path`` for ``--output``/``--error``: Slurm expands ``%`` escapes itself, so every ``%`` is doubled."""
    return path.replace("%", "%%")


def script_of(config: SlurmClusterConfig, spec: LaunchSpec, account: Account | None = None) -> str:
    """The batch script. One node: the command runs in the batch script itself (nothing to ask slurmctld). Several
    nodes (``use_srun``): ``srun`` runs it once per node; task 0 (on the first node, where the batch script runs)
    marks the step as started, so a failed srun is retried only when no task ever ran (never a second run)."""
    milli = min((p.gpu_milli for p in spec.nodes if p.gpus), default=1000)
    lines = [
        "#!/bin/bash",
        f"# kfabric job {spec.job_id} attempt {spec.attempt}: {spec.name!r}"[:200].replace("\n", " "),
        f"export KFABRIC_JOB_NAME={shlex.quote(spec.name)}",
        f"export KFABRIC_GPU_MILLI={milli}",
        "export SLURM_EXPORT_ENV=ALL",  # job steps (srun) get the script's environment, not just --export's
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in _job_env(spec, account)]
    if spec.script:
        return "\n".join([*lines, *_script_lines(spec.script)]) + "\n"
    command = shlex.quote(spec.command or "true")
    if not config.use_srun or len(spec.nodes) == 1:
        return "\n".join([*lines, f"exec /bin/bash -c {command}"]) + "\n"
    mark = shlex.quote(str(attempt_dir(config, spec.job_id, spec.attempt) / ".step-started"))
    task = shlex.quote('{ [ "$SLURM_PROCID" != 0 ] || : >"$0"; } 2>/dev/null; exec /bin/bash -c "$KFABRIC_COMMAND"')
    lines += [
        f"export KFABRIC_COMMAND={command}",
        f"for try in $(seq {STEP_RETRIES}); do",
        f"  srun --ntasks-per-node=1 --kill-on-bad-exit=1 /bin/bash -c {task} {mark}",
        "  rc=$?",
        f'  if [ "$rc" = 0 ] || [ -e {mark} ]; then exit "$rc"; fi',
        f'  echo "kfabric: srun could not start the job step (exit $rc); retry $try in {STEP_RETRY_S} s" >&2',
        f"  sleep {STEP_RETRY_S}",
        "done",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def _output_flags(spec: LaunchSpec, where: Path) -> list[str]:
    """``--output``/``--error`` (and ``--open-mode``) for the spec's output files (see the module docstring)."""
    if not spec.stdout_path:
        return [f"--output={where / 'stdout'}", f"--error={where / 'stderr'}"]
    flags = [f"--output={slurm_path(spec.stdout_path)}"]
    if spec.stderr_path and spec.stderr_path != spec.stdout_path:
        flags.append(f"--error={slurm_path(spec.stderr_path)}")
    if spec.open_mode == "append":
        flags.append("--open-mode=append")
    return flags


def sbatch_request(
    config: SlurmClusterConfig,
    spec: LaunchSpec,
    gres_type: Callable[[Iterable[str]], str],
    run_as: Account | None = None,
    as_root: bool = False,
) -> SbatchRequest:
    """The sbatch flags and script realizing ``spec`` on this cluster (ValueError when it cannot be). ``run_as``:
    the POSIX account it runs as; ``as_root``: kfabric is root and submits the job as that account."""
    check_spec(spec)
    where = attempt_dir(config, spec.job_id, spec.attempt)
    nodes = [p.node for p in spec.nodes]
    args = [
        f"--job-name={job_name(config, spec.job_id, spec.attempt)}",
        f"--comment=kfabric:{spec.job_id}:{spec.attempt}",
        f"--nodelist={','.join(nodes)}",
        f"--nodes={len(nodes)}",
        "--ntasks-per-node=1",
        f"--time={max(1, math.ceil(spec.time_limit_s / 60))}",
        "--no-requeue",
        *_output_flags(spec, where),
        f"--chdir={spec.workdir or where}",
        f"--export=KFABRIC_JOB_ID={spec.job_id},KFABRIC_ATTEMPT={spec.attempt}",
    ]
    if run_as is not None and as_root:
        args += [f"--uid={run_as.uid}", f"--gid={run_as.gid}"]
    if config.partition:
        args.append(f"--partition={config.partition}")
    project = spec.project or dict(spec.env).get("KFABRIC_PROJECT", "")
    account = config.account_for(project)
    if account:
        args.append(f"--account={account}")
    args += _gpu_flag(spec, gres_type)
    cpus = max((p.cpu_milli for p in spec.nodes), default=0)
    if cpus > 0:
        args.append(f"--cpus-per-task={math.ceil(cpus / 1000)}")
    mem = max((p.memory_mib for p in spec.nodes), default=0)
    if mem > 0:
        args.append(f"--mem={mem}M")
    return SbatchRequest(args, script_of(config, spec, run_as))
