"""When to sweep expired entries out of the in-memory stores (codes, tokens, jtis)."""

from __future__ import annotations

SWEEP_INTERVAL_S = 30.0


class SweepSchedule:
    """An O(n) sweep is due at most once per `interval_s` of server-clock time.

    Not thread-safe by itself: call `due()` under the lock of the store it schedules.
    """

    def __init__(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self._interval_s
        return True
