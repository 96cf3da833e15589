"""What to retry and how long to wait: only 408/429/500/502/503/504 and transport errors, full jitter.

The policy is data; the loop (``send_with_retry``) takes the send function, the sleep function and
the random source, so tests drive it with a mock transport and a fake clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# On a non-idempotent request (a create), only answers that prove nothing was done are retried.
SAFE_FOR_NON_IDEMPOTENT = frozenset({429, 503})

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 300.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]; attempt counts from 1."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))
        return rng.uniform(0, ceiling)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        Retry-After is honoured as a minimum; a server asking for more than max_retry_after_s is
        not waited for (the caller reports it instead of hanging).
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                return None
            return max(retry_after, self.backoff(attempt, rng))
        return self.backoff(attempt, rng)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_retriable_status(status: int, *, idempotent: bool = True) -> bool:
    return status in (RETRIABLE_STATUSES if idempotent else SAFE_FOR_NON_IDEMPOTENT)


def is_retriable_exception(exc: BaseException, *, idempotent: bool = True) -> bool:
    """Transport errors are retriable; for a create only those raised before the request was sent."""
    if idempotent:
        return isinstance(exc, httpx.TransportError) and not isinstance(
            exc, httpx.UnsupportedProtocol | httpx.ProxyError
        )
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


OnRetry = Callable[[int, float, "httpx.Response | None", "BaseException | None"], None]


async def send_with_retry(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: OnRetry | None = None,
    on_throttled: Callable[[float | None], None] | None = None,
) -> httpx.Response:
    """Send until a non-retriable answer or the policy gives up.

    Returns the last response (possibly a retriable status when attempts ran out); raises the last
    transport exception when the final attempt failed in transport.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        response: httpx.Response | None = None
        try:
            response = await send()
        except httpx.TransportError as exc:
            if not is_retriable_exception(exc, idempotent=idempotent):
                raise
            wait = policy.delay(attempt, None, rng)
            if wait is None:
                raise
            log.warning("transport error (%s), retry %d in %.2fs", type(exc).__name__, attempt, wait)
            if on_retry:
                on_retry(attempt, wait, None, exc)
            await sleep(wait)
            continue
        if not is_retriable_status(response.status_code, idempotent=idempotent):
            return response
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code in (429, 503) and on_throttled:
            on_throttled(retry_after)
        wait = policy.delay(attempt, retry_after, rng)
        if wait is None:
            return response
        await response.aread()
        await response.aclose()
        log.warning(
            "HTTP %d from %s %s, retry %d in %.2fs",
            response.status_code,
            response.request.method,
            response.request.url.path,
            attempt,
            wait,
        )
        if on_retry:
            on_retry(attempt, wait, response, None)
        await sleep(wait)
