"""``kfabric serve``: the control plane (API + controller loop) on one process."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from pathlib import Path

from kfabric.api.limits import Limits
from kfabric.backends.base import Backend
from kfabric.backends.identity import server_is_root
from kfabric.backends.local import LocalBackend, detect_gpus
from kfabric.backends.sim import SimBackend
from kfabric.backends.slurm.backend import SlurmBackend
from kfabric.backends.slurm.config import load_slurm_clusters_file
from kfabric.cli.errors import UsageError
from kfabric.scenarios.loader import load_text, scenario_text
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service.audit_keys import ENV_KEY_FILE
from kfabric.service.loop import ControllerLoop
from kfabric.service.runtime import open_runtime, open_store, stored_fleet
from kfabric.store.db import default_url

DEFAULT_PORT = 8470


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the control plane: REST API + scheduler + backends")
    p.add_argument("--db", help="database URL (default: sqlite:///STATE_DIR/kfabric.db)")
    p.add_argument("--fleet", help="fleet on first start: a scenario name (lab, korea-2030), a YAML file, or 'local'")
    p.add_argument("--policy", default="kfabric", help="scheduling policy name or YAML file (default: kfabric)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("KFABRIC_STATE_DIR", ".kfabric")))
    p.add_argument("--tick", type=float, default=1.0, help="seconds between scheduling cycles (default 1)")
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
    p.add_argument("--log-level", default="warning")
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
            out["sim"] = SimBackend(time.time, speedup=args.sim_speedup)
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
    """Files this process creates are its own only (umask 077); the state folder is made 0700 and what it holds
    already (the SQLite store and its -wal/-shm, operator.token, the local backend's attempts) loses every group and
    other permission, so no job (nor any other local account) reads the store, the tokens or other jobs' files."""
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(state_dir):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    state_dir.chmod(0o700)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: the web stack costs ~0.5 s that other commands need not pay

    from kfabric.api.app import create_app
    from kfabric.api.limits import uvicorn_options

    limits = _limits(args)
    if args.tick <= 0:
        raise UsageError(f"--tick must be > 0 seconds, got {args.tick}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    private_state_dir(args.state_dir)
    db = args.db or default_url(args.state_dir.resolve())
    name, document = _fleet_document(args)
    if document is None:
        _engine, sessions = open_store(db)
        stored = stored_fleet(sessions)
        _engine.dispose()
        if stored is None:
            raise UsageError("this store holds no fleet yet: pass --fleet (e.g. --fleet lab or --fleet local)")
        document = stored[1]
    scenario = load_text(document, name or "stored fleet")
    backends = build_backends({c.name: c.backend for c in scenario.fleet.clusters}, args)
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
    loop = ControllerLoop(rt.controller, args.tick)
    loop.start()
    print(f"kfabric serving fleet {rt.scenario.name!r} on http://{args.host}:{args.port} (db {db})", flush=True)
    try:
        app = create_app(rt, limits=limits, metrics_open=args.metrics_open)
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
            **uvicorn_options(limits),
        )  # fmt: skip
    finally:
        loop.stop()
        rt.close()
    sys.stdout.flush()
    return 0
