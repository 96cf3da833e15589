"""Per-connection adaptive rate limiter, shared by every poller and action of that connection.

A token bucket at ``rate`` requests/s with ``burst`` capacity. A 429/503 halves the rate (down to a
floor) and pauses everyone until Retry-After has passed; then the rate climbs back linearly to the
configured rate over ``recovery_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        min_rate: float = 0.5,
        recovery_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.max_rate = rate
        self.min_rate = min(min_rate, rate)
        self.burst = burst
        self.recovery_s = recovery_s
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._paused_until = 0.0
        self._last_throttle = -1e18
        self._lock = asyncio.Lock()
        self.throttles = 0
        self.waited_s = 0.0

    def __repr__(self) -> str:
        return f"AdaptiveRateLimiter(rate={self.rate:.2f}/s, max={self.max_rate}/s, burst={self.burst})"

    @property
    def rate(self) -> float:
        """The current rate, recovering linearly toward max_rate since the last throttle."""
        since = self._clock() - self._last_throttle
        if since <= 0 or self._rate >= self.max_rate:
            return self._rate
        step = (self.max_rate - self.min_rate) / self.recovery_s
        return min(self.max_rate, self._rate + step * since)

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> float:
        """Wait for a slot; returns how long this call waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    delay = self._paused_until - now
                else:
                    self._refill(now)
                    if self._tokens >= 1.0 - 1e-9:
                        self._tokens = max(0.0, self._tokens - 1.0)
                        self.waited_s += waited
                        return waited
                    delay = max((1.0 - self._tokens) / self.rate, 1e-4)
                waited += delay
                await self._sleep(delay)

    def on_throttled(self, retry_after: float | None = None) -> None:
        """The server said slow down (429/503): halve the rate and pause for Retry-After."""
        now = self._clock()
        self._rate = max(self.min_rate, self.rate / 2.0)
        self._last_throttle = now
        self._tokens = min(self._tokens, 0.0)
        self._last = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        self.throttles += 1
