"""``kfabric backup`` / ``kfabric restore`` (service/backup.py, cli/backup_cmd.py).

A backup taken while a thread keeps submitting is one commit's store: it opens, passes integrity_check, its audit
chain verifies, and every job in it has its submit entry. Restored into a fresh store (SQLite file, or pg_restore
into a new PostgreSQL database), a controller resumes from it on the same (still running) sim cluster: running
jobs are adopted, pending ones scheduled, every job ends once, none is lost or launched twice. Plus the refusals:
a non-empty or open target, a missing, damaged or mismatched backup file, a key file that does not verify.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kfabric.backends.base import LaunchSpec
from kfabric.backends.sim import SimBackend
from kfabric.cli.main import main
from kfabric.model.errors import Conflict, KfabricError, ValidationError
from kfabric.scenarios.policies import load_policy
from kfabric.service import audit_keys, backup, jobs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for, authenticate
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
FINAL = {"succeeded", "failed", "cancelled", "timeout"}
KEY_FILE = Path(os.environ["KFABRIC_AUDIT_KEY_FILE"])  # set by tests/conftest.py; the runtimes sign with it
_names = itertools.count(1)


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


class CountingSim(SimBackend):
    """The sim cluster, counting the attempts it really starts per job (a repeated launch of one attempt is a
    no-op by contract; a second attempt of a job that never lost its first is a double launch)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.starts: Counter[str] = Counter()
        self._seen: set[tuple[str, int]] = set()

    def launch(self, spec: LaunchSpec) -> None:
        super().launch(spec)
        if (spec.job_id, spec.attempt) not in self._seen:
            self._seen.add((spec.job_id, spec.attempt))
            self.starts[spec.job_id] += 1


@dataclass
class World:
    rt: Runtime
    clock: Clock
    op: Actor

    def submit(self, **spec: object) -> int:
        spec = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, "vision-lab", spec, self.clock())
        return row.id

    def run_for(self, seconds: float, step_s: float = 30.0) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.rt.controller.tick()
            self.clock.now += step_s
        self.rt.controller.tick()

    def jobs(self) -> dict[int, t.Job]:
        with self.rt.sessions() as s:
            return {row.id: row for row in s.scalars(select(t.Job))}


def _open(db_url: str, clock: Clock, sim: SimBackend) -> World:
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=clock, account_interval_s=60)
    with rt.sessions() as s:
        if rt.bootstrap_token is not None:
            return World(rt, clock, authenticate(s, rt.bootstrap_token))
        user = s.scalars(select(t.User).where(t.User.role == "operator")).one()
        return World(rt, clock, actor_for(s, user))


@dataclass
class Stores:
    kind: str
    source: str
    target: str
    #: a third, fresh store (a second restore)
    spare: str
    suffix: str


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "sqlite":
        src, dst, spare = (f"sqlite:///{tmp_path}/{n}/kfabric.db" for n in ("src", "dst", "spare"))
        yield Stores("sqlite", src, dst, spare, ".db")
        return
    server = request.getfixturevalue("pg_server")
    names = [f"bk_{role}_{next(_names):04d}" for role in ("src", "dst", "spare")]
    src, dst, spare = (server.create_database(n) for n in names)
    yield Stores("postgresql", src, dst, spare, ".dump")
    for n in names:
        server.drop_database(n)


class Submitter(threading.Thread):
    """Submits 1-GPU jobs until told to stop (at most ``limit``), as clients do while the backup runs."""

    def __init__(self, world: World, limit: int = 400) -> None:
        super().__init__(daemon=True)
        self.world, self.limit = world, limit
        self.done = 0
        self.warm = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.done < self.limit:
                self.world.submit(gpus=1, runtime_estimate_s=60.0)
                self.done += 1
                if self.done == 20:
                    self.warm.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.warm.set()


def _backup_while_submitting(world: World, dest: Path) -> tuple[backup.Outcome, int, int]:
    writer = Submitter(world)
    writer.start()
    assert writer.warm.wait(60)
    before = writer.done
    outcome = backup.backup(world.rt.engine.url.render_as_string(hide_password=False), dest, KEY_FILE)
    after = writer.done
    writer.stop.set()
    writer.join(60)
    assert writer.error is None
    return outcome, before, after


def _run_until_done(world: World, limit_s: float = 6 * 3600.0) -> None:
    end = world.clock.now + limit_s
    while world.clock.now < end:
        world.run_for(0)
        if all(row.state in FINAL for row in world.jobs().values()):
            return
        world.clock.now += 60.0
    raise AssertionError("jobs still not finished after the time limit")


def test_backup_under_writes_restores_and_a_controller_resumes(stores: Stores, tmp_path: Path) -> None:
    clock = Clock()
    sim = CountingSim(clock)
    first = _open(stores.source, clock, sim)
    running = [first.submit(runtime_estimate_s=1200.0) for _ in range(3)]
    first.run_for(60)
    waiting = first.submit(gpus=32, runtime_estimate_s=60.0)
    live = first.jobs()
    assert [live[j].state for j in running] == ["running"] * 3
    dest = tmp_path / f"backup{stores.suffix}"
    outcome, before, after = _backup_while_submitting(first, dest)
    first.rt.close()

    # the copy: private, whole, one commit's store (every job has its submit entry and event)
    assert dest.stat().st_mode & 0o777 == 0o600
    v = outcome.verification
    assert v.revision == v.head
    assert 4 + before <= v.counts["jobs"] <= 4 + after + 1
    if stores.kind == "sqlite":
        assert (v.integrity, v.audit_ok) == ("ok", True)

    restored = backup.restore(dest, stores.target, key_file=KEY_FILE)
    assert restored.verification.audit_ok is True, restored.verification.audit
    assert restored.verification.counts == v.counts
    second = _open(stores.target, clock, sim)
    assert second.rt.bootstrap_token is None
    with second.rt.sessions() as s:
        submits = s.scalar(select(func.count()).select_from(t.AuditEntry).where(t.AuditEntry.action == "job.submit"))
    kept = second.jobs()
    assert submits == len(kept) == v.counts["jobs"]

    # the controller resumes: running attempts adopted (not relaunched), pending work scheduled
    second.run_for(0)
    assert {str(j) for j in running} <= set(second.rt.controller.live.snap.running)
    _run_until_done(second)
    ended = second.jobs()
    assert set(ended) == set(kept)  # nothing lost
    assert {row.state for row in ended.values()} == {"succeeded"}
    assert {row.attempt for row in ended.values()} == {1}
    assert all(ended[j].started_at_s == live[j].started_at_s for j in running)
    assert set(sim.starts) == {str(j) for j in ended} and set(sim.starts.values()) == {1}  # each launched once
    assert ended[waiting].state == "succeeded"
    second.rt.close()


def test_restore_refuses_a_store_that_is_not_empty_unless_forced(stores: Stores, tmp_path: Path) -> None:
    clock = Clock()
    world = _open(stores.source, clock, CountingSim(clock))
    world.submit()
    world.rt.close()
    dest = backup.backup(stores.source, tmp_path, KEY_FILE).target  # a folder: the file is named in it
    assert Path(dest).name.startswith("kfabric-") and dest.endswith(stores.suffix)
    other = _open(stores.target, clock, CountingSim(clock))  # a store of its own: a fleet, an operator
    other.rt.close()
    with pytest.raises(Conflict, match=r"is not empty .*add --force"):
        backup.restore(Path(dest), stores.target, key_file=KEY_FILE)
    outcome = backup.restore(Path(dest), stores.target, force=True, key_file=KEY_FILE)
    assert outcome.verification.counts["jobs"] == 1
    assert outcome.verification.audit_ok is True


def test_restore_says_when_the_key_file_does_not_verify_the_log(stores: Stores, tmp_path: Path) -> None:
    clock = Clock()
    _open(stores.source, clock, CountingSim(clock)).rt.close()
    dest = backup.backup(stores.source, tmp_path / f"b{stores.suffix}", KEY_FILE)
    wrong = tmp_path / "other.key"
    audit_keys.load_or_create(wrong)
    outcome = backup.restore(Path(dest.target), stores.target, key_file=wrong)
    assert outcome.verification.audit_ok is False
    assert "which the key file lacks" in outcome.verification.audit
    with pytest.raises(Conflict, match="restored, but its audit log does not verify with the key file"):
        backup.require_audit(outcome, "restored")
    unchecked = backup.restore(Path(dest.target), stores.spare, key_file=tmp_path / "missing.key")
    assert unchecked.verification.audit_ok is None
    assert "not checked: no audit key file at" in unchecked.verification.audit


# -- refusals and damaged files (SQLite) ----------------------------------------------------------------------


@pytest.fixture
def sqlite_backup(tmp_path: Path) -> Path:
    clock = Clock()
    world = _open(f"sqlite:///{tmp_path}/live/kfabric.db", clock, CountingSim(clock))
    world.submit()
    world.rt.close()
    return Path(backup.backup(f"sqlite:///{tmp_path}/live/kfabric.db", tmp_path / "good.db", KEY_FILE).target)


def _missing(good: Path, path: Path) -> None:
    """Leaves ``path`` absent."""


def _garbage(good: Path, path: Path) -> None:
    path.write_bytes(b"this is not a backup\n" * 100)


def _empty(good: Path, path: Path) -> None:
    path.write_bytes(b"")


def _truncated(good: Path, path: Path) -> None:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 3])


def _scrambled(good: Path, path: Path) -> None:
    data = bytearray(good.read_bytes())
    for i in range(4096, len(data), 97):  # every page after the first: headers, cells, pointers
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _pg_archive(good: Path, path: Path) -> None:
    path.write_bytes(b"PGDMP\x01\x0e\x00" + b"\x00" * 100)


def _folder(good: Path, path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "no such backup file"),
        (_folder, "is a folder, not a backup file"),
        (_garbage, "is neither a SQLite store nor a pg_dump"),
        (_empty, "is neither a SQLite store nor a pg_dump"),
        (_truncated, "(cannot be read|fails PRAGMA integrity_check)"),
        (_scrambled, "(cannot be read|fails PRAGMA integrity_check|cannot be copied)"),
        (_pg_archive, "is a postgresql backup, but the target .* is a sqlite store"),
    ],
    ids=["missing", "folder", "garbage", "empty", "truncated", "scrambled", "pg-into-sqlite"],
)
def test_a_missing_or_damaged_backup_is_refused_and_the_store_kept(
    sqlite_backup: Path, tmp_path: Path, make: Callable[[Path, Path], None], message: str
) -> None:
    target = tmp_path / "kept" / "kfabric.db"
    backup.restore(sqlite_backup, f"sqlite:///{target}")
    before = target.read_bytes()
    bad = tmp_path / "bad.db"
    make(sqlite_backup, bad)
    with pytest.raises(ValidationError, match=message):
        backup.restore(bad, f"sqlite:///{target}", force=True)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["kfabric.db"]  # no temporary file left


def test_restore_refuses_a_store_that_a_process_has_open(sqlite_backup: Path, tmp_path: Path) -> None:
    clock = Clock()
    url = f"sqlite:///{tmp_path}/busy/kfabric.db"
    world = _open(url, clock, CountingSim(clock))
    world.jobs()  # the pool keeps a connection open, as a running service does
    try:
        with pytest.raises(Conflict, match=r"is open in another process .*stop the service"):
            backup.restore(sqlite_backup, url, force=True)
    finally:
        world.rt.close()


@pytest.mark.parametrize(
    ("source", "dest", "message"),
    [
        ("nowhere/kfabric.db", "out.db", "no SQLite store here"),
        ("live/kfabric.db", "no/such/folder/out.db", "its folder does not exist .*mkdir -p"),
        ("live/kfabric.db", "live/kfabric.db", "is the store itself"),
        (":memory:", "out.db", "names no database file"),
    ],
    ids=["no-store", "no-folder", "onto-itself", "memory"],
)
def test_backup_refusals(sqlite_backup: Path, tmp_path: Path, source: str, dest: str, message: str) -> None:
    url = "sqlite://" if source == ":memory:" else f"sqlite:///{tmp_path / source}"
    with pytest.raises(KfabricError, match=message):
        backup.backup(url, tmp_path / dest, KEY_FILE)


def test_cli_backup_and_restore(
    sqlite_backup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["backup", "copy.db", "--state-dir", "live", "--audit-key-file", str(KEY_FILE)]) == 0
    out = capsys.readouterr().out
    assert "integrity:       ok" in out and "schema revision:" in out and "jobs 1" in out
    assert f"Reminder: the audit key file ({KEY_FILE}) is not in this backup" in out
    assert main(["restore", "copy.db", "--state-dir", "restored"]) == 0
    assert "entries verify with keys" in capsys.readouterr().out  # KFABRIC_AUDIT_KEY_FILE
    assert main(["restore", "copy.db", "--state-dir", "restored"]) == 2
    assert main(["restore", "nope.db", "--db", "sqlite:///x.db"]) == 2
    assert main(["backup", "b.db", "--audit-key-file", "missing.key"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "no such backup file" in err and "--audit-key-file missing.key" in err
    assert "Traceback" not in err
    assert (tmp_path / "restored").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "restored" / "kfabric.db").stat().st_mode & 0o777 == 0o600


def test_pg_tools_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("kfabric.service.backup.shutil.which", lambda _name: None)
    monkeypatch.setattr(backup, "PG_ROOT", tmp_path)
    with pytest.raises(ValidationError, match=r"pg_dump: not found on PATH nor under .*postgresql-client"):
        backup.pg_tool("pg_dump")
    (tmp_path / "14" / "bin").mkdir(parents=True)
    (tmp_path / "16" / "bin").mkdir(parents=True)
    for version in ("14", "16"):
        (tmp_path / version / "bin" / "pg_dump").touch()
    assert backup.pg_tool("pg_dump") == tmp_path / "16" / "bin" / "pg_dump"
