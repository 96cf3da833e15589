"""Failures stay small: a task that fails unexpectedly is restarted with backoff, never the process.

A poll task, a connection's sink or its source planning runs under `supervise`. When it raises anything
(a defect, a Kafka outage longer than the helpers' own retries, a resource the projection cannot encode),
the failure is logged with its type, counted, recorded in the connection's `Health` (what /readyz shows),
and the task starts again after a doubling delay; the other tasks and connections go on. A restarted task
that keeps running for `healthy_after_s` is healthy again. Only a stop request (or cancellation) ends the
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bridge.errors import BridgeError

log = logging.getLogger(__name__)


@dataclass
class Health:
    """The failing tasks of one connection, with why, for /readyz."""

    failures: dict[str, str] = field(default_factory=dict)

    def failed(self, task: str, exc: BaseException) -> None:
        self.failures[task] = f"{type(exc).__name__}: {exc}"[:300]

    def recovered(self, task: str) -> None:
        self.failures.pop(task, None)

    def problems(self) -> list[str]:
        return [f"{task}: {reason}" for task, reason in sorted(self.failures.items())]


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def supervise(
    task: str,
    run: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    health: Health | None = None,
    on_failure: Callable[[str, BaseException], None] | None = None,
    min_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    healthy_after_s: float = 30.0,
) -> None:
    """Run `run()` until it returns or `stop` is set, restarting it with backoff whenever it raises."""
    delay = min_delay_s
    while not stop.is_set():
        started = time.monotonic()
        restarted = health is not None and task in health.failures
        clear = _clear_later(health, task, healthy_after_s) if health is not None and restarted else None
        try:
            await run()
            if health is not None:
                health.recovered(task)
            return
        except Exception as exc:  # contained on purpose: this task restarts, nothing else stops
            if time.monotonic() - started >= healthy_after_s:
                delay = min_delay_s
            log.error(
                "%s failed (%s: %s); restarting it in %.0fs",
                task,
                type(exc).__name__,
                exc,
                delay,
                exc_info=not _expected(exc),
            )
            if health is not None:
                health.failed(task, exc)
            if on_failure is not None:
                on_failure(task, exc)
        finally:
            if clear is not None:
                clear.cancel()
        await wait_or_stop(stop, delay)
        delay = min(delay * 2, max_delay_s)


def _clear_later(health: Health, task: str, after_s: float) -> asyncio.Task[None]:
    async def clear() -> None:
        await asyncio.sleep(after_s)
        health.recovered(task)

    return asyncio.create_task(clear())


def _expected(exc: BaseException) -> bool:
    """Errors the bridge raises on purpose need no traceback in the log; defects do."""
    return isinstance(exc, BridgeError)
