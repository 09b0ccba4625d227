"""``kfabric backup PATH [--db URL | --state-dir DIR]`` and ``kfabric restore BACKUP [--db URL | --state-dir DIR]
[--force]``: a consistent copy of the store while the service runs, and a verified restore
(:mod:`kfabric.service.backup`; docs/operations.md, "Backup and restore"). Both run on the store's host and read
the store directly, not through the API."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import emit_json
from kfabric.service import backup as svc
from kfabric.service.audit_keys import ENV_KEY_FILE
from kfabric.store.db import default_url

if TYPE_CHECKING:
    from kfabric.cli.main import Subparsers

Sub: TypeAlias = "Subparsers"


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the store consistently while the service runs (SQLite online backup, or pg_dump), then check it",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the backup file (0600), or a folder to name it in")
    _store_args(p)
    p.set_defaults(handler=run_backup)

    p = sub.add_parser("restore", help="restore a backup into a store (stop the service first), migrate and verify it")
    p.add_argument("backup", type=Path, metavar="BACKUP", help="a file written by kfabric backup (or pg_dump -Fc)")
    _store_args(p)
    p.add_argument("--force", action="store_true", help="replace a store that is not empty")
    p.set_defaults(handler=run_restore)


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="URL", help="the store's URL (sqlite:///PATH or postgresql+psycopg://...)")
    where.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the service's state folder: its store is DIR/kfabric.db (default: $KFABRIC_STATE_DIR, else .kfabric)",
    )
    p.add_argument(
        "--audit-key-file",
        type=Path,
        metavar="PATH",
        help=f"the audit key file to verify the log with (default: ${ENV_KEY_FILE}, else STATE_DIR/audit.key); "
        "never part of a backup",
    )
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    return Path(os.environ.get("KFABRIC_STATE_DIR", ".kfabric"))


def store_url(args: argparse.Namespace) -> str:
    """``--db``, else the SQLite store of ``--state-dir`` (as ``kfabric serve`` finds it)."""
    if args.db is not None:
        if not args.db.strip():
            raise UsageError("--db: empty; pass sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB")
        return str(args.db)
    return default_url(_state_dir(args).resolve())


def key_file(args: argparse.Namespace) -> Path:
    """``--audit-key-file``, else ``KFABRIC_AUDIT_KEY_FILE``, else ``STATE_DIR/audit.key`` (as ``serve`` does)."""
    if args.audit_key_file is not None:
        path = Path(args.audit_key_file)
        if not path.is_file():
            raise UsageError(f"--audit-key-file {path}: no such file; name the key file kfabric serve signs with")
        return path
    env = os.environ.get(ENV_KEY_FILE)
    return Path(env) if env else _state_dir(args) / "audit.key"


def run_backup(args: argparse.Namespace) -> int:
    keys = key_file(args)
    outcome = svc.backup(store_url(args), args.path, keys)
    if args.json:
        emit_json(outcome.as_dict())
    else:
        print(f"Backed up {outcome.source} to {outcome.target} ({_size(outcome.size_bytes)}, {outcome.seconds:.2f} s)")
        _print_checks(outcome)
        print(
            f"Reminder: the audit key file ({keys}) is not in this backup. Back it up separately, and keep it apart "
            "from the store's backups: without it a restored audit log cannot be verified."
        )
    svc.require_audit(outcome, "backed up")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    outcome = svc.restore(args.backup, store_url(args), args.force, key_file(args))
    if args.json:
        emit_json(outcome.as_dict())
    else:
        print(
            f"Restored {outcome.source} into {outcome.target} ({outcome.seconds:.2f} s), migrated to the newest schema"
        )
        _print_checks(outcome)
    svc.require_audit(outcome, "restored")
    return 0


def _print_checks(outcome: svc.Outcome) -> None:
    v = outcome.verification
    current = "current" if v.revision == v.head else f"this kfabric's newest is {v.head}"
    print(f"  integrity:       {v.integrity}")
    print(f"  schema revision: {v.revision} ({current})")
    print(f"  rows:            {', '.join(f'{name} {n}' for name, n in sorted(v.counts.items()))}")
    print(f"  audit chain:     {v.audit}")
    for note in outcome.notes:
        print(f"  note:            {note}")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
