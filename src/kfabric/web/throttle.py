"""Failed sign-ins are limited per client address: guessing tokens through the sign-in form costs a lockout.

A sliding window per address (in memory, per server process: an attacker spread over the servers of one store
gets each server's allowance, still far below what guessing a 256-bit token needs). The table of addresses is
bounded; the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from threading import Lock

#: failed sign-ins an address may make in :data:`WINDOW_S` before it is refused
MAX_FAILURES = 10
WINDOW_S = 300.0
#: addresses remembered at once (each a few floats)
MAX_ADDRESSES = 10_000


class SignInThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = Lock()

    def retry_after_s(self, address: str, now_s: float) -> float:
        """0 when ``address`` may try to sign in now, else the seconds until it may."""
        with self._lock:
            times = self._recent(address, now_s)
            if len(times) < self.max_failures:
                return 0.0
            return max(1.0, times[0] + self.window_s - now_s)

    def failed(self, address: str, now_s: float) -> None:
        with self._lock:
            times = self._recent(address, now_s)
            times.append(now_s)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str, now_s: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        return times
