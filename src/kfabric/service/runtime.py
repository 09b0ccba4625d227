"""Everything a running kfabric service holds: the store, the fleet, the controller and its backends."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from kfabric.backends.base import Backend
from kfabric.model.errors import KfabricError, ValidationError
from kfabric.scenarios.loader import Scenario, load_text, scenario_text
from kfabric.sched.policy import Policy
from kfabric.service import audit, audit_keys
from kfabric.service.controller import Controller
from kfabric.service.leadership import Leadership, LeaseSettings
from kfabric.service.tenancy import ensure_operator, seed_from_scenario
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory


@dataclass
class Runtime:
    engine: Engine
    sessions: sessionmaker[Session]
    scenario: Scenario
    controller: Controller
    clock: Callable[[], float]
    #: the first operator's token when this start created it (printed once by ``kfabric serve``)
    bootstrap_token: str | None = None
    #: this server's side of the controller lease (``kfabric serve``); None: the controller is driven directly
    leadership: Leadership | None = None

    @property
    def lease_settings(self) -> LeaseSettings:
        return self.leadership.settings if self.leadership is not None else LeaseSettings()

    def close(self) -> None:
        self.controller.close()  # launches under way are waited for and recorded first
        self.engine.dispose()


def open_store(db_url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Connect and migrate; a store that cannot be reached is a clear error, not a traceback."""
    engine = make_engine(db_url)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ValidationError(
            "--db", f"cannot open the store at {engine.url!r}: {reason}", "start the database server or fix the URL"
        ) from None
    return engine, session_factory(engine)


def stored_fleet(sessions: sessionmaker[Session]) -> tuple[str, str] | None:
    with sessions() as s:
        row = s.scalars(select(t.FleetSource).where(t.FleetSource.active.is_(True)).order_by(t.FleetSource.id)).first()
        return (row.name, row.document) if row else None


def open_runtime(
    db_url: str,
    policy: Policy,
    backends: Mapping[str, Backend],
    fleet: str | None = None,
    fleet_document: str | None = None,
    clock: Callable[[], float] = time.time,
    account_interval_s: float = 300.0,
    audit_key_file: Path | None = None,
) -> Runtime:
    """Open (and migrate) the store; on first start seed it from ``fleet`` (a scenario name or file, or the
    YAML ``fleet_document``) and create the first operator. Later starts use the stored fleet; naming a
    different one is an error (the store would no longer match it). Audit entries are signed with the keys of
    ``audit_key_file`` (default: the file named by ``KFABRIC_AUDIT_KEY_FILE``)."""
    engine, sessions = open_store(db_url)
    try:
        audit_keys.use(engine, audit_keys.load_or_create(audit_key_file) if audit_key_file else audit_keys.from_env())
        with sessions.begin() as s:
            audit.check_keys(s)
            audit.sign_legacy(s, clock())
    except KfabricError:
        engine.dispose()
        raise
    stored = stored_fleet(sessions)
    if stored is None:
        if fleet_document is None:
            if fleet is None:
                raise ValidationError("--fleet", "the store holds no fleet yet", "name one: --fleet lab")
            fleet_document = scenario_text(fleet)
        scenario = load_text(fleet_document, fleet or "fleet")
        seed_from_scenario(sessions, scenario, fleet_document, clock())
    else:
        name, document = stored
        scenario = load_text(document, f"stored fleet {name!r}")
        if fleet is not None and fleet not in (name, scenario.name):
            raise ValidationError(
                "--fleet",
                f"the store already runs fleet {name!r}, not {fleet!r}; a start never switches fleets",
                f"start without --fleet, then change the running fleet with `kfabric fleet apply {fleet}` "
                "(try --dry-run first: it prints the difference), or use a new --db",
            )
    token = ensure_operator(sessions, clock())
    controller = Controller(sessions, scenario, policy, backends, clock, account_interval_s=account_interval_s)
    rt = Runtime(engine, sessions, scenario, controller, clock, token)
    controller.on_fleet_change = lambda changed: setattr(rt, "scenario", changed)  # kfabric fleet apply
    return rt


def bound_idle_transactions(engine: Engine, seconds: float) -> None:
    """PostgreSQL: the server ends any session of this process that stays idle inside a transaction for ``seconds``
    (``idle_in_transaction_session_timeout``), releasing its row locks. A process paused mid-transaction (SIGSTOP,
    a frozen VM) would otherwise hold them (the audit chain's head, the lease row, job rows) and stall every other
    server until it wakes; its transaction is rolled back instead. Connections already pooled are dropped so that
    every connection gets the setting. No-op on SQLite (one server per file)."""
    if engine.dialect.name != "postgresql":
        return
    ms = max(1, int(seconds * 1000))

    @event.listens_for(engine, "connect")
    def _bound(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"SET idle_in_transaction_session_timeout = {ms}")
        cur.close()
        dbapi_conn.commit()

    engine.dispose()


def state_dir_default() -> Path:
    return Path.home() / ".kfabric"
