"""Audit verification speed: build a keyed audit chain of N entries in a fresh store, then time
``kfabric audit --verify``'s work (``service.audit.verify_chain``) over it.

    .venv/bin/python benchmarks/bench_audit_verify.py                      # 1,000,000 entries, SQLite
    .venv/bin/python benchmarks/bench_audit_verify.py --entries 200000 --db postgresql+psycopg://...

Prints entries, seconds to build, seconds to verify and entries/s. Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from kfabric.service import audit, audit_keys
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

_BATCH = 10_000


def build(url: str, entries: int, ring: audit_keys.Keyring) -> float:
    engine = make_engine(url)
    migrate(engine)
    audit_keys.use(engine, ring)
    t0 = time.perf_counter()
    prev, now = audit.GENESIS, 1_780_000_000.0
    with engine.begin() as conn:
        for start in range(0, entries, _BATCH):
            rows = []
            for i in range(start, min(entries, start + _BATCH)):
                detail = {"pool": "b200-a", "nodes": [f"b200-a-{i % 512:03d}"], "gpus": 8, "attempt": 1}
                org = 1 + i % 40
                kid, digest = audit.entry_digest(ring, prev, now + i, "controller", "job.admit", "job", str(i), org,
                                                 detail)  # fmt: skip
                rows.append({"at_s": now + i, "actor": "controller", "action": "job.admit", "object_type": "job",
                             "object_id": str(i), "organization_id": org, "detail": detail, "prev_hash": prev,
                             "hash": digest, "key_id": kid})  # fmt: skip
                prev = digest
            conn.execute(insert(t.AuditEntry), rows)
        conn.execute(insert(t.ChainHead), [{"id": 1, "hash": prev, "count": entries}])
    engine.dispose()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--db", help="an empty database URL (default: a new SQLite file in a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/audit.db"
        ring = audit_keys.load_or_create(Path(tmp) / "audit.key")
        built_s = build(url, args.entries, ring)
        engine = make_engine(url)
        audit_keys.use(engine, ring)
        t0 = time.perf_counter()
        with session_factory(engine)() as s:
            verified = audit.verify_chain(s)
        verify_s = time.perf_counter() - t0
        engine.dispose()
    out = {"entries": verified.entries, "build_s": round(built_s, 1), "verify_s": round(verify_s, 1),
           "entries_per_s": round(verified.entries / verify_s)}  # fmt: skip
    if args.json:
        print(json.dumps(out))
    else:
        print(f"audit verify: {out['entries']:,} entries in {out['verify_s']} s ({out['entries_per_s']:,}/s); "
              f"built in {out['build_s']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
