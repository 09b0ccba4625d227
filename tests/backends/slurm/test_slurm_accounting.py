"""Finished jobs read from Slurm accounting (slurmdbd + plain ``sacct``) instead of the jobcomp file.

Needs ``slurmdbd`` and ``mariadb-server`` besides Slurm (``apt-get install -y --no-install-recommends slurmdbd
mariadb-server``); skipped without them, also in CI, which installs only the core Slurm packages. ~25 s.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_lab import SlurmLab, port_base, report, spec, start_lab, stop_lab, wait_for, wait_state

from kfabric.backends.base import RunState

pytestmark = pytest.mark.integration
FINAL = {s for s in RunState if s.final}


@pytest.fixture(scope="module")
def slurm_acct(slurm_root: Path, slurm_a: SlurmLab) -> Iterator[SlurmLab]:
    if shutil.which("slurmdbd") is None or shutil.which("mariadbd") is None:
        pytest.skip("accounting needs: apt-get install -y --no-install-recommends slurmdbd mariadb-server")
    taken = {slurm_a.port_base, slurm_a.port_base + 200}
    lab = start_lab("gamma", 2, port_base(taken), slurm_root, min_job_age_s=2, accounting=True)
    try:
        yield lab
    finally:
        stop_lab(lab)


def test_finished_jobs_from_sacct(slurm_acct: SlurmLab) -> None:
    backend = slurm_acct.backend(completion="sacct")
    backend.launch(spec("acct-fails", "exit 3", ["node1"]))
    backend.launch(spec("acct-gang", "sleep 1", ["node1", "node2"], gpus=8))
    failed, gang = wait_state(backend, "acct-fails", FINAL), wait_state(backend, "acct-gang", FINAL)
    assert (failed.state, failed.exit_code, gang.state) == (RunState.FAILED, 3, RunState.SUCCEEDED)
    # Slurm forgets them after MinJobAge (2 s): a restarted controller finds them in accounting
    wait_for(lambda: not slurm_acct.jobs_named("kf-acct-fails.1,kf-acct-gang.1"), 60, "squeue to forget the jobs")
    fresh = slurm_acct.backend(completion="sacct")
    for job_id, state, code in [("acct-fails", RunState.FAILED, 3), ("acct-gang", RunState.SUCCEEDED, 0)]:
        r = report(fresh, job_id)
        assert r is not None and (r.state, r.exit_code) == (state, code), r
        assert r.started_at_s is not None and r.ended_at_s is not None and r.started_at_s <= r.ended_at_s
    still = report(backend, "acct-fails")  # the running backend keeps its final states
    assert still is not None and still.state is RunState.FAILED
