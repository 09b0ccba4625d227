"""Session fixtures: private Slurm clusters (see slurm_lab.py). Without ``slurmctld`` the Slurm tests are
skipped, unless ``KFABRIC_REQUIRE_SLURM=1`` (CI), where they fail."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_lab import (
    SCRIPTS,
    SLURM_MISSING,
    TIME_LIMIT_S,
    SlurmLab,
    port_base,
    spec,
    start_lab,
    stop_lab,
    unavailable,
)


@pytest.fixture(scope="session")
def slurm_root(job_account: str) -> Iterator[Path]:
    """A directory for the clusters; ``job_account`` is created first, as every test job runs as that account."""
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        unavailable(SLURM_MISSING)
    if os.geteuid() != 0:
        unavailable("the private Slurm clusters need root (start-slurm.sh runs munged, slurmctld, slurmd)")
    if not (SCRIPTS / "start-slurm.sh").exists():
        unavailable(f"{SCRIPTS}/start-slurm.sh not found (set KFABRIC_SLURM_SCRIPTS)")
    root = Path(tempfile.mkdtemp(prefix="kfabric-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged needs every parent of its socket world-executable
    yield root
    if os.environ.get("KFABRIC_KEEP_SLURM_DIR") != "1":  # set it to read the clusters' logs after a failure
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_a(slurm_root: Path) -> Iterator[SlurmLab]:
    """Cluster ``alpha``: 3 nodes x 8 b200 GPUs. Its first act is to launch the time-limit job (on node3), so
    that the minute Slurm needs to kill it overlaps the other tests; ``test_zz_time_limit`` checks it last."""
    lab = start_lab("alpha", 3, port_base(set()), slurm_root)
    try:
        lab.backend().launch(spec("timelimit", "echo started; sleep 600", ["node3"], time_limit_s=TIME_LIMIT_S))
        yield lab
    finally:
        stop_lab(lab)


@pytest.fixture(scope="session")
def slurm_b(slurm_root: Path, slurm_a: SlurmLab) -> Iterator[SlurmLab]:
    """Cluster ``beta`` (a second site): 2 nodes x 8 b200 GPUs, its own ports and directory; MinJobAge 5 s,
    so finished jobs soon leave squeue and are known from the jobcomp file only."""
    lab = start_lab("beta", 2, port_base({slurm_a.port_base}), slurm_root, min_job_age_s=5)
    try:
        yield lab
    finally:
        stop_lab(lab)
