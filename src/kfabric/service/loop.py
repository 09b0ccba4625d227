"""Runs the controller in a background thread every ``interval_s`` until stopped.

:class:`ControllerLoop` ticks unconditionally (one process owns the store: tests, the embedded twin).
:class:`LeaderLoop` is what ``kfabric serve`` runs: a lease thread renews (or tries to take) the ``controller``
lease and heartbeats every renew interval; the controller thread ticks only while this server holds the lease,
calls :meth:`Controller.lead` whenever it starts leading an epoch (again), and on :class:`NotLeader` drops the
epoch and waits as a standby.
"""

from __future__ import annotations

import logging
import threading

from kfabric.service.controller import Controller
from kfabric.service.leadership import Leadership, NotLeader

log = logging.getLogger("kfabric.controller")


class ControllerLoop:
    def __init__(self, controller: Controller, interval_s: float = 1.0) -> None:
        self.controller = controller
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kfabric-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.controller.tick()
            except Exception:  # the loop must survive one bad tick; the store keeps the truth
                log.exception("controller tick failed; retrying next interval")
            self._stop.wait(self.interval_s)


class LeaderLoop:
    """The controller loop of one of several servers; see the module docstring."""

    def __init__(self, controller: Controller, leadership: Leadership, interval_s: float = 1.0) -> None:
        self.controller = controller
        self.leadership = leadership
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._led: int | None = None  # the epoch the controller was set up for (lead) and still acts for
        self._lease_thread = threading.Thread(target=self._lease, name="kfabric-lease", daemon=True)
        self._thread = threading.Thread(target=self._run, name="kfabric-controller", daemon=True)

    def start(self) -> None:
        self._renew()  # the first try before serving: a lone server leads from its first tick
        self._lease_thread.start()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking, then give the lease up and leave ``servers`` (a standby takes over at its next try)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._lease_thread.join(timeout_s)
        for step in (self.leadership.release, self.leadership.leave):
            try:
                step()
            except Exception:  # the store may be gone at shutdown; the lease then expires by itself
                log.warning("could not %s at shutdown", step.__name__, exc_info=True)

    # ---- the lease thread ------------------------------------------------------------------------------------
    def _lease(self) -> None:
        while not self._stop.wait(self.leadership.settings.renew_s):
            self._renew()

    def _renew(self) -> None:
        try:
            epoch = self.leadership.renew()
        except Exception:  # the store is unreachable: the local deadline runs out and the controller stops acting
            log.warning("could not renew the controller lease", exc_info=True)
            epoch = None
        if epoch is not None and epoch != self._led:
            self._wake.set()
        last = self.controller.last_tick
        try:
            self.leadership.heartbeat(last.now_s if last is not None and epoch is not None else None)
        except Exception:
            log.warning("could not record this server's heartbeat", exc_info=True)

    # ---- the controller thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            epoch = self.leadership.epoch
            if epoch is None:
                self._led = None
                self.controller.follow_as_standby()  # the API of a standby answers for the fleet in effect
                self._wake.wait(self.interval_s)
                self._wake.clear()
                continue
            try:
                if epoch != self._led:
                    self.controller.lead(self.leadership, epoch)
                    self._led = epoch
                self.controller.tick()
            except NotLeader as exc:
                log.warning("stopped acting as the leader: %s", exc)
                self.leadership.drop(epoch)
                self._led = None
            except Exception:  # the loop must survive one bad tick; the store keeps the truth
                log.exception("controller tick failed; retrying next interval")
            self._stop.wait(self.interval_s)
