"""Flood bounds of the MLLP listener: token buckets that answer at once (never wait), so a flood is
refused message by message while the listener keeps serving everyone within the limits."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def take(self) -> None:
        """Spend one token; call only after `available()` said yes."""
        self._tokens -= 1.0


def take_all(*buckets: TokenBucket) -> bool:
    """One token from every bucket, or none from any (a refused message costs no one's budget)."""
    if all(b.available() for b in buckets):
        for b in buckets:
            b.take()
        return True
    return False
