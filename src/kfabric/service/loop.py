"""Runs the controller in a background thread every ``interval_s`` until stopped."""

from __future__ import annotations

import logging
import threading

from kfabric.service.controller import Controller

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
