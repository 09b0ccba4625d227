"""Issue 19, ``kfabric job log``: the server (root) reads a file at a path the job's user chose. A hostile job tries
to make that read hand it the server's secrets — its output swapped for a link to the audit key, the operator token
or ``/etc/shadow``, a directory of the path swapped for a link to the state folder, a FIFO that would block the
server, a file of another account — and every one is refused without a byte of the target. Other tenants' output is
a 404, a colleague's a 403, and a huge output is served in bounded pages.

The local-backend attacks need root (jobs run as a throwaway account; ``job_account``); the tenancy checks run on the
sim world (``api``/``world`` fixtures of tests/api)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_world import Api, World

from kfabric.client import ApiError
from kfabric.service import job_output
from kfabric.service.audit_keys import ENV_KEY_FILE
from kfabric.service.job_output import OutputRefused, read_output
from local_server import LocalServer, serve_local, wait_job
from posix_accounts import IS_ROOT, NOT_ROOT

# --------------------------------------------------------------------------------------------- tenancy (sim world)


def test_another_tenants_output_is_a_404_a_colleagues_a_403(api: Api, world: World) -> None:
    job = world.finished["snu-vision"]
    path = f"/v1/jobs/{job}/log"
    own = api.get(path, world.token("member", "snu-vision"))
    assert own.status_code == 200, own.text
    assert api.get(path, world.token("operator")).status_code == 200
    for stranger in (world.token("member", "tinyml"), world.token("org-admin", "tinyml"), world.token("provider")):
        answer = api.get(path, stranger)
        assert answer.status_code == 404, answer.text
        assert "snu-vision" not in answer.text and str(own.json()["data"]) not in answer.text
    colleague = api.get(path, world.token("member2", "snu-vision"))
    assert colleague.status_code == 403 and "only the job's user and operators" in colleague.text
    assert api.get(path, None).status_code == 401


@pytest.mark.parametrize(
    "query",
    ["max_bytes=0", f"max_bytes={job_output.MAX_READ_BYTES + 1}", "offset=-1", "stream=both", "tail_lines=-2"],
)
def test_log_queries_out_of_bounds_are_refused(api: Api, world: World, query: str) -> None:
    answer = api.get(f"/v1/jobs/{world.finished['snu-vision']}/log?{query}", world.token("member", "snu-vision"))
    assert answer.status_code == 422, answer.text


# --------------------------------------------------------------------------------------------- the reader itself


def test_the_reader_refuses_links_fifos_foreign_and_linked_files(tmp_path: Path) -> None:
    me = os.geteuid()
    real = tmp_path / "real.out"
    real.write_text("mine\n")
    assert read_output(str(real), me).data == b"mine\n"
    fifo = tmp_path / "fifo.out"
    os.mkfifo(fifo)
    hard = tmp_path / "hard.out"
    os.link(real, tmp_path / "hard-twin")
    os.link(real, hard)
    cases = {
        str(fifo): "not a regular file",
        str(hard): "hard links",
        str(tmp_path): "not a regular file",
        "relative/path": "not an absolute path",
    }
    for path, why in cases.items():
        with pytest.raises(OutputRefused, match=why):
            read_output(path, me)
    single = tmp_path / "single.out"
    single.write_text("x\n")
    with pytest.raises(OutputRefused, match="owned by uid"):
        read_output(str(single), me + 1)
    assert read_output(str(tmp_path / "not-yet.out"), me).data == b""  # a file not written yet reads as empty


def test_a_tail_and_a_page_never_cut_a_character_and_stay_bounded(tmp_path: Path) -> None:
    out = tmp_path / "utf8.out"
    out.write_bytes(("é" * 10).encode() + b"\nlast line\n")
    page = read_output(str(out), os.geteuid(), max_bytes=5)
    assert page.data.decode() == "éé" and page.next_offset == 4  # the third é would be cut: it waits for the next
    assert read_output(str(out), os.geteuid(), tail_lines=1).data == b"last line\n"
    big = tmp_path / "big.out"
    big.write_bytes(b"y" * (3 * job_output.MAX_READ_BYTES))
    chunk = read_output(str(big), os.geteuid(), max_bytes=10 * job_output.MAX_READ_BYTES)
    assert len(chunk.data) == job_output.MAX_READ_BYTES and not chunk.eof


# --------------------------------------------------------------------------------------------- hostile jobs (root)

root_only = pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT)


@pytest.fixture(scope="module")
def server(job_account: str) -> Iterator[LocalServer]:
    if not IS_ROOT:
        pytest.skip(NOT_ROOT)
    with serve_local(job_account) as srv:
        yield srv


def _secrets(server: LocalServer) -> dict[str, Path]:
    return {
        "audit-key": Path(os.environ.get(ENV_KEY_FILE) or server.state / "audit.key"),
        "operator-token": server.state / "operator.token",
        "shadow": Path("/etc/shadow"),
    }


@root_only
@pytest.mark.parametrize("secret", ["audit-key", "operator-token", "shadow"])
def test_a_job_that_swaps_its_output_for_a_link_to_a_secret_gets_a_refusal(
    server: LocalServer, job_dir: Path, secret: str
) -> None:
    target = _secrets(server)[secret]
    assert target.exists()
    command = f'echo harmless; o="$SLURM_SUBMIT_DIR/kfabric-$SLURM_JOB_ID.out"; rm -f "$o"; ln -s {target} "$o"'
    with server.client() as op:
        job = op.submit("default", gpus=1, time_limit_s=60, workdir=str(job_dir), command=command)
        done = wait_job(op, job["id"])
        assert done["state"] == "succeeded", done["reason"]
        assert Path(done["stdout_path"]).is_symlink()
        for stream in ("out", "err"):
            with pytest.raises(ApiError) as refused:
                op.job_log(job["id"], stream)
            assert refused.value.status == 409 and "symbolic link" in str(refused.value)
            assert target.read_text(errors="replace")[:16] not in str(refused.value)
    shown = server.cli("job", "log", str(job["id"]))
    assert shown.returncode != 0 and "symbolic link" in shown.stderr and shown.stdout == ""


@root_only
def test_a_directory_of_the_path_swapped_for_a_link_is_not_followed(server: LocalServer, job_dir: Path) -> None:
    sub = shlex.quote(str(job_dir / "logs"))
    command = f"rm -rf {sub}; ln -s {shlex.quote(str(server.state))} {sub}"
    (job_dir / "logs").mkdir()
    os.chown(job_dir / "logs", job_dir.stat().st_uid, job_dir.stat().st_gid)
    with server.client() as op:
        job = op.submit(
            "default", gpus=1, time_limit_s=60, workdir=str(job_dir), command=command,
            output="logs/audit.key",
        )  # fmt: skip
        done = wait_job(op, job["id"])
        assert done["stdout_path"] == str(job_dir / "logs" / "audit.key")
        with pytest.raises(ApiError) as refused:
            op.job_log(job["id"])
    assert refused.value.status == 409 and "'logs' is a symbolic link" in str(refused.value)


@root_only
def test_a_fifo_or_a_file_of_another_account_is_refused_without_blocking(server: LocalServer, job_dir: Path) -> None:
    command = 'o="$SLURM_SUBMIT_DIR/kfabric-$SLURM_JOB_ID.out"; rm -f "$o"; mkfifo "$o"'
    with server.client() as op:
        fifo_job = op.submit("default", gpus=1, time_limit_s=60, workdir=str(job_dir), command=command)
        wait_job(op, fifo_job["id"])
        with pytest.raises(ApiError) as refused:
            op.job_log(fifo_job["id"])
        assert refused.value.status == 409 and "not a regular file" in str(refused.value)
        # a root-owned file the job's account could not have written, at the path of a finished job's output
        planted = op.submit("default", gpus=1, time_limit_s=60, workdir=str(job_dir), command="true")
        done = wait_job(op, planted["id"])
        Path(done["stdout_path"]).unlink()
        Path(done["stdout_path"]).write_text("root's words\n")
        with pytest.raises(ApiError) as foreign:
            op.job_log(planted["id"])
    assert foreign.value.status == 409 and "owned by uid 0" in str(foreign.value)


@root_only
def test_a_link_root_made_is_followed(server: LocalServer, job_dir: Path) -> None:
    top = Path(tempfile.mkdtemp(prefix="kfabric-site-", dir="/tmp"))  # reachable by the job's account
    top.chmod(0o755)
    site = top / "site-link"
    site.symlink_to(job_dir)  # as a site's /home -> /data/home: made by root
    assert os.lstat(site).st_uid == 0 and stat.S_ISLNK(os.lstat(site).st_mode)
    with server.client() as op:
        job = op.submit("default", gpus=1, time_limit_s=60, workdir=str(site), command="echo through-the-site-link")
        done = wait_job(op, job["id"])
        assert done["state"] == "succeeded", done["reason"]
        assert op.job_log(job["id"])["data"] == "through-the-site-link\n"
    shutil.rmtree(top)
