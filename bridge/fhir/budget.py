"""The request budget of one connection: how many requests per second (and per day) go to Epic, and who
goes first.

Everything that talks to Epic for a connection in this process draws from one budget: the sink's
commands, scans, roster reads, backfills, ``epic-bridge check``. Epic asks apps not to create
"excessive or unexpected load", so the budget is a ceiling for the connection as a whole, and the
question is only who gets the next request. Strict priority answers it:

* ``INTERACTIVE`` (sink commands, ``check``) > ``HINT`` (scans a hint asked for) > ``SCHEDULED`` (due
  scans, roster reads) > ``BULK`` (backfills and other full scans);
* waiters queue per class, and each token goes to the oldest waiter of the highest class waiting, so a
  FIND never waits behind a sweep beyond the one request already in flight;
* a token bucket at ``rate`` requests/s holding at most ``burst``; a 429/503 halves the rate (down to a
  floor) for everyone and pauses everyone until Retry-After has passed, then the rate climbs back
  linearly to the configured one over ``recovery_s``;
* an optional per-day cap, counted per calendar day in UTC. Non-interactive requests are paced over
  the day (by any moment, at most the share of the cap for the part of the day gone, plus an hour's
  share), so the cap is not spent by morning; once the day's cap is spent only interactive requests
  pass (they are counted in ``over_day``).

The budget is exact within one process; a standalone tool beside a running bridge takes a reserved
share of the configured rate instead (see ``bridge.connection.request_budget``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import IntEnum

DAY_S = 86_400.0
_PACE_SLACK_S = 3_600.0  # a non-interactive request may run this far ahead of an even spread of the day cap
_USAGE_TAU_S = 60.0  # time constant of the per-class usage estimate


class Priority(IntEnum):
    """Who gets the next request: lower value first."""

    INTERACTIVE = 0
    HINT = 1
    SCHEDULED = 2
    BULK = 3

    @property
    def label(self) -> str:
        return self.name.lower()


Observer = Callable[[Priority, float, bool], None]
"""Told of each request let through: its class, how long it waited, whether it went past the day cap."""


class RequestBudget:
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        per_day: int | None = None,
        min_rate: float = 0.5,
        recovery_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1 or (per_day is not None and per_day < 1):
            raise ValueError("rate must be > 0, burst >= 1 and per_day (if set) >= 1")
        self.max_rate = rate
        self.min_rate = min(min_rate, rate)
        self.burst = burst
        self.per_day = per_day
        self.recovery_s = recovery_s
        self._rate = rate
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self.observer: Observer | None = None  # e.g. the connection's metrics
        self._tokens = float(burst)
        self._last = clock()
        self._paused_until = 0.0
        self._last_throttle = -1e18
        self._queues: dict[Priority, deque[asyncio.Future[bool]]] = {p: deque() for p in Priority}
        self._dispatcher: asyncio.Task[None] | None = None
        self._serving: Priority | None = None  # the class the dispatcher is waiting a token for
        self._day = math.floor(wall() / DAY_S)
        self._used_today = 0
        self._usage = {p: 0.0 for p in Priority}
        self._usage_at = {p: clock() for p in Priority}
        self.throttles = 0
        self.waited_s = 0.0
        self.granted = {p: 0 for p in Priority}
        self.over_day = 0

    def __repr__(self) -> str:
        day = f", per_day={self.per_day}" if self.per_day else ""
        return f"RequestBudget(rate={self.rate:.2f}/s, max={self.max_rate}/s, burst={self.burst}{day})"

    # -- what the budget allows now ----------------------------------------------------------------
    @property
    def rate(self) -> float:
        """The current rate, recovering linearly toward max_rate since the last throttle."""
        since = self._clock() - self._last_throttle
        if since <= 0 or self._rate >= self.max_rate:
            return self._rate
        step = (self.max_rate - self.min_rate) / self.recovery_s
        return min(self.max_rate, self._rate + step * since)

    @property
    def day_remaining(self) -> int | None:
        """Requests left in today's cap (UTC day); None without a cap."""
        if self.per_day is None:
            return None
        self._roll_day()
        return max(0, self.per_day - self._used_today)

    def sustainable_rate(self) -> float:
        """Requests/s the budget can keep up: the current rate, and the day cap spread over the day."""
        if self.per_day is None:
            return self.rate
        return min(self.rate, self.per_day / DAY_S)

    def usage(self, priority: Priority) -> float:
        """Recent requests/s of one class (an exponentially weighted average over about a minute)."""
        now = self._clock()
        return (
            self._usage[priority] * math.exp(-(now - self._usage_at[priority]) / _USAGE_TAU_S) / _USAGE_TAU_S
        )

    def available_rate(self, priority: Priority) -> float:
        """Requests/s left for `priority` once the classes above it took what they have been using."""
        above = sum(self.usage(p) for p in Priority if p < priority)
        return max(0.0, self.sustainable_rate() - above)

    def waiting(self, priority: Priority) -> int:
        return sum(1 for f in self._queues[priority] if not f.done())

    # -- taking a request ----------------------------------------------------------------------------
    async def acquire(self, priority: Priority = Priority.SCHEDULED) -> float:
        """Wait for this class's turn and a token; returns how long this call waited."""
        if not self._queued_at_or_above(priority) and self._delay(priority) <= 0:
            self._observe(priority, 0.0, self._take(priority))
            return 0.0
        started = self._clock()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queues[priority].append(future)
        self._wake(priority)
        try:
            over_day = await future
        except asyncio.CancelledError:
            if future in self._queues[priority]:
                self._queues[priority].remove(future)
            raise
        waited = self._clock() - started
        self.waited_s += waited
        self._observe(priority, waited, over_day)
        return waited

    def on_throttled(self, retry_after: float | None = None) -> None:
        """The server said slow down (429/503): halve the rate and pause everyone for Retry-After."""
        now = self._clock()
        self._rate = max(self.min_rate, self.rate / 2.0)
        self._last_throttle = now
        self._tokens = min(self._tokens, 0.0)
        self._last = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        self.throttles += 1

    # -- internals -----------------------------------------------------------------------------------
    def _queued_at_or_above(self, priority: Priority) -> bool:
        return any(self.waiting(p) for p in Priority if p <= priority)

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def _roll_day(self) -> None:
        day = math.floor(self._wall() / DAY_S)
        if day != self._day:
            self._day, self._used_today = day, 0

    def _day_delay(self) -> float:
        """Seconds until the day's cap lets one more non-interactive request through (0: now)."""
        if self.per_day is None:
            return 0.0
        self._roll_day()
        into_day = self._wall() - self._day * DAY_S
        if self._used_today + 1 > self.per_day:
            return DAY_S - into_day  # spent: wait for the next UTC day
        allowed_at = (self._used_today + 1) / self.per_day * DAY_S - _PACE_SLACK_S
        return max(0.0, allowed_at - into_day)

    def _delay(self, priority: Priority) -> float:
        """Seconds until a request of `priority` may go (0: now)."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        delay = 0.0 if self._tokens >= 1.0 - 1e-9 else max((1.0 - self._tokens) / self.rate, 1e-4)
        if priority != Priority.INTERACTIVE:
            delay = max(delay, self._day_delay())
        return delay

    def _observe(self, priority: Priority, waited: float, over_day: bool) -> None:
        if self.observer is not None:
            self.observer(priority, waited, over_day)

    def _take(self, priority: Priority) -> bool:
        """Spend a token on a request of `priority`; True if it goes past the day's cap."""
        now = self._clock()
        self._tokens = max(0.0, self._tokens - 1.0)
        self._roll_day()
        over_day = self.per_day is not None and self._used_today >= self.per_day
        self.over_day += over_day
        self._used_today += 1
        self.granted[priority] += 1
        decay = math.exp(-(now - self._usage_at[priority]) / _USAGE_TAU_S)
        self._usage[priority] = self._usage[priority] * decay + 1.0
        self._usage_at[priority] = now
        return over_day

    def _head(self) -> tuple[Priority, asyncio.Future[bool]] | None:
        for priority in Priority:
            queue = self._queues[priority]
            while queue and queue[0].done():  # cancelled waiters
                queue.popleft()
            if queue:
                return priority, queue[0]
        return None

    def _wake(self, priority: Priority) -> None:
        """Make sure a dispatcher runs; restart it if it sleeps for a lower class than `priority`."""
        running = self._dispatcher is not None and not self._dispatcher.done()
        if running and self._serving is not None and priority < self._serving:
            assert self._dispatcher is not None
            self._dispatcher.cancel()  # it only ever waits in sleep(): nothing half-done is lost
            running = False
        if not running:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        """Hand out tokens, one at a time, to the oldest waiter of the highest class waiting."""
        while (head := self._head()) is not None:
            priority, future = head
            delay = self._delay(priority)
            if delay <= 0:
                self._queues[priority].popleft()
                future.set_result(self._take(priority))
                continue
            self._serving = priority
            try:
                await self._sleep(delay)
            finally:
                if asyncio.current_task() is self._dispatcher:  # not a successor's state
                    self._serving = None
