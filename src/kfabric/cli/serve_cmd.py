"""``kfabric serve``: the control plane (API + controller loop) on one process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from kfabric.backends.base import Backend
from kfabric.backends.local import LocalBackend, detect_gpus
from kfabric.backends.sim import SimBackend
from kfabric.backends.slurm.backend import SlurmBackend
from kfabric.backends.slurm.config import load_slurm_clusters_file
from kfabric.cli.errors import UsageError
from kfabric.scenarios.loader import load_text, scenario_text
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
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
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: the web stack costs ~0.5 s that other commands need not pay

    from kfabric.api.app import create_app

    if args.tick <= 0:
        raise UsageError(f"--tick must be > 0 seconds, got {args.tick}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
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
        account_interval_s=args.account_interval,
    )  # fmt: skip
    if rt.bootstrap_token:
        token_file = args.state_dir / "operator.token"
        token_file.write_text(rt.bootstrap_token + "\n")
        token_file.chmod(0o600)
        print(f"first start: operator token written to {token_file} (export KFABRIC_TOKEN=$(cat {token_file}))")
    loop = ControllerLoop(rt.controller, args.tick)
    loop.start()
    print(f"kfabric serving fleet {rt.scenario.name!r} on http://{args.host}:{args.port} (db {db})", flush=True)
    try:
        uvicorn.run(create_app(rt), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        loop.stop()
        rt.close()
    sys.stdout.flush()
    return 0
