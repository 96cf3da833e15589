"""One command's calls to the server: counted, retried with full-jitter backoff, bounded by its deadline.

The FHIR client the sink uses makes one attempt per call; retrying is decided here, because only here
is it known how long the command may still take and whether a failed call was a create.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bridge.sink.failures import Failure, GiveUp, classify
from bridge.sink.model import ErrorInfo

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class AmbiguousCreate(Exception):
    """A create may or may not have been carried out; search before trying again."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    max_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        wait = rng.uniform(0, min(self.max_s, self.base_s * 2 ** max(0, attempt - 1)))
        return max(wait, retry_after_s or 0.0)


@dataclass
class CommandCalls:
    deadline: float  # time.monotonic() value
    not_after: float | None = None  # no create request leaves after this time.monotonic() value
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    attempts: int = 0  # requests sent for this command
    retries: int = 0
    last_failure: Failure | None = None

    def remaining(self, deadline: float | None = None) -> float:
        return (self.deadline if deadline is None else deadline) - self.clock()

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        creating: bool = False,
        deadline: float | None = None,
        what: str = "request",
    ) -> T:
        """Run `fn` until it succeeds, fails for good (GiveUp), or, for a create, fails ambiguously
        (AmbiguousCreate). A create in flight is never cancelled: that would make it ambiguous."""
        until = self.deadline if deadline is None else deadline
        while True:
            left = self.remaining(until)
            if left <= 0:
                raise GiveUp(self._expired(what, None))
            self.attempts += 1
            try:
                if creating:
                    return await fn()
                async with asyncio.timeout(left):
                    return await fn()
            except TimeoutError:
                raise GiveUp(self._expired(what, None)) from None
            except Exception as exc:
                failure = classify(exc, creating=creating)
                if failure is None:
                    raise
                self.last_failure = failure
                if not failure.retriable:
                    raise GiveUp(failure) from None
                if failure.ambiguous:
                    raise AmbiguousCreate(failure) from None
                await self.pause(failure, until, what)

    async def pause(self, failure: Failure, deadline: float | None = None, what: str = "request") -> None:
        """Wait before the next attempt, or GiveUp if that would pass the deadline."""
        self.retries += 1
        wait = self.backoff.delay(self.retries, self.rng, failure.retry_after_s)
        if wait >= self.remaining(deadline):
            raise GiveUp(self._expired(what, failure))
        await self.sleep(wait)

    def _expired(self, what: str, last: Failure | None) -> Failure:
        last = last or self.last_failure
        reason = f": last error {last.error.message}" if last is not None else ""
        error = ErrorInfo(
            f"gave up on the {what} after {self.attempts} attempt(s): the command's deadline passed{reason}",
            http_status=last.error.http_status if last else None,
            epic_code=last.error.epic_code if last else None,
            operation_outcome=last.error.operation_outcome if last else None,
            retriable=True,
        )
        return Failure(error, retriable=True, ambiguous=False)
