"""``kfabric serve``: the control plane (API + controller loop) on one process.

Several servers may share one PostgreSQL store: every one answers the API, the holder of the ``controller`` lease
runs the controller (``service/leadership.py``, ``service/loop.py``). On SQLite one server owns the file: an
exclusive lock on ``DB.lock`` (``flock``, released by the kernel when the process ends, however it ends) makes a
second ``serve`` on the same file refuse to start, naming the first.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from kfabric.api.limits import Limits
from kfabric.backends.base import Backend
from kfabric.backends.identity import server_is_root
from kfabric.backends.local import LocalBackend, detect_gpus
from kfabric.backends.sim import SimBackend
from kfabric.backends.slurm.backend import SlurmBackend
from kfabric.backends.slurm.config import load_slurm_clusters_file
from kfabric.cli.errors import UsageError
from kfabric.model.errors import ValidationError
from kfabric.scenarios.loader import load_text, scenario_text
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service.audit_keys import ENV_KEY_FILE
from kfabric.service.instrumented import CallStats, instrument
from kfabric.service.leadership import Leadership, LeaseSettings, ServerInfo
from kfabric.service.logs import FORMATS
from kfabric.service.logs import configure as configure_logs
from kfabric.service.loop import LeaderLoop
from kfabric.service.notifications import MAX_ATTEMPTS, NotificationWorker, settings_of
from kfabric.service.runtime import bound_idle_transactions, open_runtime, open_store, stored_fleet
from kfabric.store.db import default_url

DEFAULT_PORT = 8470


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the control plane: REST API + scheduler + backends")
    p.add_argument("--db", help="database URL (default: sqlite:///STATE_DIR/kfabric.db)")
    p.add_argument("--fleet", help="fleet on first start: a scenario name (lab, korea-2030), a YAML file, or 'local'")
    p.add_argument(
        "--policy",
        default="kfabric",
        help="scheduling policy name or YAML file (default: kfabric); used only while the store holds no policy "
        "applied with `kfabric policy apply`, which wins",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("KFABRIC_STATE_DIR", ".kfabric")))
    p.add_argument("--tick", type=float, default=1.0, help="seconds between scheduling cycles (default 1)")
    p.add_argument(
        "--lease-ttl", type=float, default=10.0, metavar="SECONDS",
        help="the controller lease's lifetime: a standby takes over within TTL + one renew interval after the "
        "leader stops (default 10; servers' clocks must agree within a fraction of it: NTP)",
    )  # fmt: skip
    p.add_argument(
        "--lease-renew", type=float, metavar="SECONDS",
        help="seconds between lease renewals (standbys: tries) and heartbeats (default TTL / 3)",
    )  # fmt: skip
    p.add_argument("--local-gpus", type=int, help="GPUs of the local backend (default: detected by nvidia-smi)")
    p.add_argument("--sim-speedup", type=float, default=1.0, help="sim backend: simulated seconds per second")
    p.add_argument("--account-interval", type=float, default=300.0, help="seconds between usage records")
    p.add_argument(
        "--slurm-config",
        type=Path,
        help="YAML of the Slurm clusters to dispatch to (docs/slurm.md); each serves the fleet cluster of its name",
    )
    p.add_argument(
        "--audit-key-file",
        type=Path,
        help="the audit log's HMAC key file, kept outside the store (default: $KFABRIC_AUDIT_KEY_FILE, else "
        "STATE_DIR/audit.key; created 0600 on first start; docs/security.md)",
    )
    _limit_options(p)
    _notify_options(p)
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error", "critical"),
        help="info (default): one line per decision (admit, preempt, requeue, end), backend launch and terminate, "
        "and error; debug adds every API request and backend poll",
    )  # fmt: skip
    p.add_argument(
        "--log-format", default="json", choices=FORMATS,
        help="json (default): one JSON object per line with ts, level, logger, event and its fields (job_id, "
        "request_id, ...); text: the same as 'TIME LOGGER LEVEL EVENT key=value' (docs/operations.md)",
    )  # fmt: skip
    p.set_defaults(handler=run)


def _limit_options(p: argparse.ArgumentParser) -> None:
    """What one request may cost, and who may read /metrics (docs/security.md, "Request limits")."""
    d = Limits()
    p.add_argument(
        "--max-body", type=int, default=d.max_body, metavar="BYTES",
        help=f"largest request body; larger ones get 413 before they are read (default {d.max_body})",
    )  # fmt: skip
    p.add_argument(
        "--body-timeout", type=float, default=d.body_timeout_s, metavar="SECONDS",
        help=f"a request body must arrive within this of its headers, else 408 (default {d.body_timeout_s:g})",
    )  # fmt: skip
    p.add_argument(
        "--header-timeout", type=float, default=d.header_timeout_s, metavar="SECONDS",
        help=f"the request line and headers must arrive within this, else 408 (default {d.header_timeout_s:g})",
    )  # fmt: skip
    p.add_argument(
        "--metrics-open", action="store_true",
        help="serve /metrics without a token (default: an operator's or a provider's token is needed)",
    )  # fmt: skip


def _notify_options(p: argparse.ArgumentParser) -> None:
    """Job notifications (``--mail-type``, ``--notify``; service/notifications.py, docs/operations.md)."""
    p.add_argument(
        "--smtp", default=os.environ.get("KFABRIC_SMTP") or None, metavar="HOST:PORT",
        help="SMTP server for --mail-type mail (default: $KFABRIC_SMTP; none: mail is not sent, its rows fail)",
    )  # fmt: skip
    p.add_argument("--smtp-from", default="", metavar="ADDR", help="sender of job mail (default kfabric@HOSTNAME)")
    p.add_argument("--smtp-starttls", action="store_true", help="upgrade the SMTP connection with STARTTLS")
    p.add_argument(
        "--smtp-user", default="", metavar="USER", help="SMTP login; the password is read from $KFABRIC_SMTP_PASSWORD"
    )
    p.add_argument(
        "--notify-allow", action="append", default=[], metavar="CIDR|HOST",
        help="let webhooks reach these networks or hosts although they are loopback, link-local (cloud metadata), "
        "... (refused by default); repeatable or comma-separated",
    )  # fmt: skip
    p.add_argument(
        "--notify-attempts", type=int, default=MAX_ATTEMPTS, metavar="N",
        help=f"deliveries tried per notification (exponential back-off) before it is marked failed "
        f"(default {MAX_ATTEMPTS})",
    )  # fmt: skip


def _limits(args: argparse.Namespace) -> Limits:
    try:
        return Limits(max_body=args.max_body, body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _fleet_document(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.fleet is None:
        return None, None
    if args.fleet == "local":
        gpus = args.local_gpus if args.local_gpus is not None else detect_gpus()
        if gpus < 1:
            raise UsageError("--fleet local: no GPU detected (nvidia-smi); pass --local-gpus N to declare N GPUs")
        return "local", local_scenario_text(gpus)
    return args.fleet, scenario_text(args.fleet)


def build_backends(clusters: dict[str, str], args: argparse.Namespace) -> dict[str, Backend]:
    """One backend per backend kind the fleet's clusters use, and one per Slurm cluster (keyed by its name)."""
    out: dict[str, Backend] = {}
    slurm = {c.name: c for c in load_slurm_clusters_file(args.slurm_config)} if args.slurm_config else {}
    for cluster, kind in sorted(clusters.items()):
        if kind == "slurm":
            if cluster not in slurm:
                where = args.slurm_config or "--slurm-config"
                raise UsageError(f"fleet cluster {cluster!r} runs on Slurm but {where} does not configure it")
            out[cluster] = SlurmBackend(slurm[cluster])
        elif kind == "local" and "local" not in out:
            out["local"] = LocalBackend(args.state_dir / "local", gpus=args.local_gpus)
        elif kind == "sim" and "sim" not in out:
            out["sim"] = SimBackend(time.time, speedup=args.sim_speedup, state_dir=args.state_dir / "sim")
        elif kind not in ("local", "sim"):
            raise UsageError(f"the fleet uses backend {kind!r}, which this build cannot drive (local, sim, slurm)")
    return out


def audit_key_file(args: argparse.Namespace) -> Path:
    """``--audit-key-file``, else ``KFABRIC_AUDIT_KEY_FILE``, else ``STATE_DIR/audit.key``."""
    if args.audit_key_file is not None:
        return Path(args.audit_key_file)
    env = os.environ.get(ENV_KEY_FILE)
    return Path(env) if env else args.state_dir / "audit.key"


def private_state_dir(state_dir: Path) -> None:
    """The state folder is made 0700 and what it holds already (the SQLite store and its -wal/-shm, operator.token,
    the local backend's attempts) loses every group and other permission, so no job (nor any other local account)
    reads the store, the tokens or other jobs' files. (``run`` also sets the process's umask to 077, so what the
    server creates later is its own only.)"""
    state_dir.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(state_dir):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    state_dir.chmod(0o700)


def _sqlite_path(db: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for PostgreSQL or an in-memory SQLite)."""
    prefix = "sqlite:///"
    if not db.startswith(prefix) or db[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(db[len(prefix) :])


@contextlib.contextmanager
def single_server_lock(db_file: Path, server: ServerInfo) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``DB.lock`` while the block runs; a second server on the same SQLite file
    gets a :class:`UsageError` naming the first (pid, host, start time). The kernel drops the lock when the
    holder's process ends, so a lock left by a killed server never blocks a restart."""
    path = db_file.with_name(db_file.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ValidationError(
            "--db", f"cannot create the folder of {str(db_file)!r} or its lock: {exc.strerror}", "use a writable path"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(_held_by(path, db_file)) from None
        os.ftruncate(fd, 0)
        record = {"pid": server.pid, "host": server.host, "started_at_s": server.started_at_s, "server": server.id}
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)


def _held_by(path: Path, db_file: Path) -> str:
    try:
        other = json.loads(path.read_text() or "{}")
        started = datetime.fromtimestamp(float(other["started_at_s"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        who = f"pid {other['pid']} on {other['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "a process that is still starting"
    return (
        f"another kfabric serve already runs on the SQLite store {db_file} ({who}; lock {path}): "
        "one server per SQLite file. Stop it first, or use its API (kfabric status); several servers need a "
        "PostgreSQL store (--db postgresql+psycopg://...)"
    )


def run(args: argparse.Namespace) -> int:
    limits = _limits(args)
    if args.tick <= 0:
        raise UsageError(f"--tick must be > 0 seconds, got {args.tick}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    settings = _lease_settings(args)
    configure_logs(args.log_format, args.log_level)
    os.umask(0o077)  # files this server creates from now on are its own only
    private_state_dir(args.state_dir)
    db = args.db or default_url(args.state_dir.resolve())
    server = ServerInfo.this_process(f"http://{args.host}:{args.port}", time.time())
    sqlite_file = _sqlite_path(db)
    lock = single_server_lock(sqlite_file, server) if sqlite_file is not None else contextlib.nullcontext()
    with lock:
        return _serve(args, db, server, settings, exclusive=sqlite_file is not None, limits=limits)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _lease_settings(args: argparse.Namespace) -> LeaseSettings:
    renew = args.lease_renew if args.lease_renew is not None else 0.0
    if args.lease_renew is not None and args.lease_renew <= 0:
        raise UsageError(f"--lease-renew must be > 0 seconds, got {args.lease_renew}")
    return LeaseSettings(ttl_s=args.lease_ttl, renew_s=renew)


def _serve(
    args: argparse.Namespace, db: str, server: ServerInfo, settings: LeaseSettings, exclusive: bool, limits: Limits
) -> int:
    import uvicorn  # imported here: the web stack costs ~0.5 s that other commands need not pay

    from kfabric.api.app import create_app
    from kfabric.api.limits import uvicorn_options

    notify = settings_of(
        args.smtp, args.smtp_from, args.smtp_starttls, args.smtp_user, os.environ.get("KFABRIC_SMTP_PASSWORD", ""),
        args.notify_allow, args.notify_attempts,
    )  # fmt: skip
    name, document = _fleet_document(args)
    if document is None:
        _engine, sessions = open_store(db)
        stored = stored_fleet(sessions)
        _engine.dispose()
        if stored is None:
            raise UsageError("this store holds no fleet yet: pass --fleet (e.g. --fleet lab or --fleet local)")
        document = stored[1]
    scenario = load_text(document, name or "stored fleet")
    backends = instrument(build_backends({c.name: c.backend for c in scenario.fleet.clusters}, args), CallStats())
    rt = open_runtime(
        db, load_policy(args.policy), backends, fleet=name, fleet_document=document,
        account_interval_s=args.account_interval, audit_key_file=audit_key_file(args),
    )  # fmt: skip
    if rt.bootstrap_token:
        token_file = args.state_dir / "operator.token"
        token_file.write_text(rt.bootstrap_token + "\n")
        token_file.chmod(0o600)
        print(f"first start: operator token written to {token_file} (export KFABRIC_TOKEN=$(cat {token_file}))")
        if server_is_root():
            print("jobs run as their user's POSIX account, never as root: kfabric user set-posix admin ACCOUNT")
    bound_idle_transactions(rt.engine, max(1.0, settings.ttl_s / 2))  # a paused server's locks do not stall others
    rt.leadership = Leadership(rt.sessions, server, settings, exclusive=exclusive)
    loop = LeaderLoop(rt.controller, rt.leadership, args.tick)
    loop.start()
    leadership = rt.leadership
    notifier = NotificationWorker(rt.sessions, notify, leading=lambda: leadership.epoch is not None)
    notifier.start()  # job mail and webhooks, delivered apart from the cycle while this server leads
    role = "leader" if rt.leadership.epoch is not None else "standby (another server leads: kfabric status)"
    print(
        f"kfabric serving fleet {rt.scenario.name!r} on http://{args.host}:{args.port} (db {db}); "
        f"server {server.id}, {role}",
        flush=True,
    )
    # uvicorn re-raises SIGTERM once it has shut down: exit through the ``finally`` below, so that the lease is given
    # up at once (a standby takes over at its next try, not after the TTL) and this server leaves ``servers``
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app = create_app(rt, limits=limits, metrics_open=args.metrics_open)
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, log_config=None,
            **uvicorn_options(limits),
        )  # fmt: skip
    finally:
        notifier.stop()
        loop.stop()
        rt.close()
    sys.stdout.flush()
    return 0
