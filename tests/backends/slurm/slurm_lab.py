"""Helpers for the Slurm integration tests: private Slurm 22.05 clusters started with
``../shared/slurm/start-slurm.sh``, and waiting on a backend's reports.

Nothing is installed here: without ``slurmctld`` the tests are skipped, unless ``KFABRIC_REQUIRE_SLURM=1``
(CI), where they fail. Each cluster gets its own directory under /tmp (world-executable, as munged needs), its
own ``PORT_BASE`` and ``CLUSTER_NAME``, and is stopped with ``stop-slurm.sh`` (which kills only what the start
script started, by pid) at the end of the session.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfabric.backends.base import BackendUnavailable, LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.backends.slurm import SlurmBackend, SlurmClusterConfig
from kfabric.backends.slurm.discover import discover, node_states
from posix_accounts import JOB_ACCOUNT

SLURM_MISSING = "Slurm not installed: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
REPO = Path(__file__).resolve().parents[3]
SCRIPTS = Path(os.environ.get("KFABRIC_SLURM_SCRIPTS", REPO.parent / "shared" / "slurm"))
#: the time-limit job's limit: Slurm's smallest (1 minute); Slurm kills it 60-90 s after its start
TIME_LIMIT_S = 60.0


def unavailable(why: str) -> None:
    if os.environ.get("KFABRIC_REQUIRE_SLURM") == "1":
        pytest.fail(f"{why} (required: KFABRIC_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(why)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def port_base(taken: set[int]) -> int:
    """A PORT_BASE whose controller and node ports (base+17, base+1001..) are free: 16800-style ranges spread
    by pid so that parallel runs do not collide."""
    start = 20000 + (os.getpid() % 90) * 200
    for k in range(90):
        base = 20000 + (start - 20000 + k * 200) % 18000
        if base not in taken and all(_port_free(base + k) for k in (6, 17, 19, 1001, 1002, 1003)):
            return base
    raise RuntimeError("no free port range for a private Slurm cluster")


@dataclass
class SlurmLab:
    """One private cluster: its directory, config, and a backend factory."""

    name: str
    dir: Path
    nodes: int
    config: SlurmClusterConfig
    port_base: int

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf"), "SLURM_LAB_DIR": str(self.dir)}

    def backend(self, **overrides: object) -> SlurmBackend:
        return SlurmBackend(dataclasses.replace(self.config, **overrides))  # type: ignore[arg-type]

    def cmd(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def ctld_pid(self) -> int:
        return int((self.dir / "run" / "slurmctld.pid").read_text().strip())

    def start_ctld(self) -> None:
        """Start slurmctld again (it recovers its saved state); SLURM_LAB_DIR lets stop-slurm.sh stop it."""
        self.cmd("slurmctld", "-f", str(self.dir / "slurm.conf"))
        wait_for(lambda: "UP" in self.cmd("scontrol", "ping", check=False), 30, "slurmctld to answer")

    def jobs_named(self, name: str) -> list[str]:
        out = self.cmd("squeue", "--all", "--states=all", "--noheader", f"--name={name}", "-o", "%i")
        return out.split()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.25)


def report(backend: SlurmBackend, job_id: str, attempt: int = 1) -> RunReport | None:
    try:
        reports = backend.poll()
    except BackendUnavailable:
        return None
    return next((r for r in reports if (r.job_id, r.attempt) == (job_id, attempt)), None)


def wait_state(
    backend: SlurmBackend, job_id: str, states: set[RunState], timeout_s: float = 30.0, attempt: int = 1
) -> RunReport:
    found: list[RunReport] = []

    def reached() -> bool:
        r = report(backend, job_id, attempt)
        if r is not None and r.state in states:
            found.append(r)
            return True
        return False

    wait_for(reached, timeout_s, f"{job_id}.{attempt} to reach {sorted(s.value for s in states)}")
    return found[0]


def spec(
    job_id: str,
    command: str,
    nodes: dict[str, int] | list[str],
    *,
    gpus: int = 1,
    attempt: int = 1,
    time_limit_s: float = 300.0,
    gpu_milli: int = 1000,
    env: tuple[tuple[str, str], ...] = (),
) -> LaunchSpec:
    per_node = nodes if isinstance(nodes, dict) else dict.fromkeys(nodes, gpus)
    parts = tuple(NodeGpus(n, tuple(range(k)), gpu_milli) for n, k in per_node.items())
    return LaunchSpec(job_id, attempt, job_id, command, parts, time_limit_s, env, user="tester", posix_user=JOB_ACCOUNT)


def start_lab(
    name: str, nodes: int, base: int, root: Path, min_job_age_s: int = 300, accounting: bool = False
) -> SlurmLab:
    where = root / name
    env = {**os.environ, "NNODES": str(nodes), "GPUS_PER_NODE": "8", "GPU_TYPE": "b200"}
    env |= {"PORT_BASE": str(base), "CLUSTER_NAME": name, "MIN_JOB_AGE": str(min_job_age_s)}
    env |= {"ACCOUNTING": "1" if accounting else "0"}
    done = subprocess.run(
        ["bash", str(SCRIPTS / "start-slurm.sh"), str(where)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"start-slurm.sh {where} failed:\n{done.stderr[-3000:]}")
    config = SlurmClusterConfig(
        name=name,
        site=f"site-{name}",
        slurm_conf=str(where / "slurm.conf"),
        workdir_root=str(where / "runs"),
        command_timeout_s=20.0,
        backoff_max_s=2.0,
    )
    return SlurmLab(name, where, nodes, config, base)


def stop_lab(lab: SlurmLab) -> None:
    stop = ["bash", str(SCRIPTS / "stop-slurm.sh"), str(lab.dir)]
    subprocess.run(stop, capture_output=True, timeout=120, check=False)


def up_pools(lab: SlurmLab) -> list[dict[str, Any]]:
    """The lab's discovered pools, limited to nodes that are up now (earlier tests take nodes down)."""
    up = node_states(lab.config)
    pools = []
    for pool in discover(lab.config, online=date(2020, 1, 1)).pools:
        names = [n for n in pool["node_names"] if up.get(n)]
        if names:
            pools.append(
                {**pool, "owner": "government", "node_names": names, "nodes": len(names), "nodes_per_rack": len(names)}
            )
    assert pools, f"no node of {lab.name} is up"
    return pools


def one_cluster_fleet(lab: SlurmLab, name: str = "one-slurm", project: str = "p", credit_su_hours: float = 1e6) -> str:
    """One real Slurm cluster as a one-site fleet (its nodes that are up), one project with an ample grant."""
    site = lab.config.site
    doc = {
        "name": name, "description": "one real Slurm cluster",
        "owners": [{"name": "government", "kind": "government"}],
        "sites": [{"name": site, "certification": "government-operated", "clearance": "restricted", "region": "kr",
                   "operator": "test", "power_cap_mw": 10.0, "pue": 1.2}],
        "clusters": [{"name": lab.name, "site": site, "backend": "slurm"}], "pools": up_pools(lab),
        "organizations": [{"name": "kisti", "kind": "institute"}],
        "projects": [{"name": project, "organization": "kisti"}],
        "programs": [{"name": "sovereign"}],
        "grants": [{"id": f"g-{project}", "program": "sovereign", "project": project, "start": date(2020, 1, 1),
                    "end": date(2100, 1, 1), "credit_su_hours": credit_su_hours}],
    }  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


def two_site_fleet(a: SlurmLab, b: SlurmLab) -> str:
    site = {"region": "kr", "operator": "test", "power_cap_mw": 10.0, "pue": 1.2}
    doc = {
        "name": "two-slurm-sites",
        "description": "two real Slurm clusters as two sites",
        "owners": [{"name": "government", "kind": "government"}],
        "sites": [
            {"name": a.config.site, "certification": "government-operated", "clearance": "restricted", **site},
            {"name": b.config.site, "certification": "private-factory", "clearance": "internal", **site},
        ],
        "clusters": [
            {"name": a.name, "site": a.config.site, "backend": "slurm"},
            {"name": b.name, "site": b.config.site, "backend": "slurm"},
        ],
        "pools": [*up_pools(a), *up_pools(b)],
        "organizations": [{"name": "kisti", "kind": "institute"}, {"name": "nova", "kind": "startup"}],
        "projects": [{"name": "sovereign-fm", "organization": "kisti"}, {"name": "nova-llm", "organization": "nova"}],
        "programs": [{"name": "sovereign"}, {"name": "startups"}],
        "grants": [
            {
                "id": g,
                "program": program,
                "project": project,
                "start": date(2020, 1, 1),
                "end": date(2100, 1, 1),
                "credit_su_hours": 1e6,
            }
            for g, program, project in (("g-fm", "sovereign", "sovereign-fm"), ("g-nova", "startups", "nova-llm"))
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


_prefixes = itertools.count(1)


def fresh_prefix() -> str:
    """A job-name prefix no other test of this run uses: the clusters are shared by the whole session, and a new
    backend adopts every Slurm job named ``PREFIX-JOB.ATTEMPT`` it finds (a restarted controller must), so two
    tests whose stores both number their jobs from 1 would otherwise see each other's jobs."""
    return f"t{os.getpid() % 100_000}x{next(_prefixes)}"
