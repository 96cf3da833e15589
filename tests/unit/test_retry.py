from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from bridge.retry import (
    RetryPolicy,
    is_retriable_exception,
    is_retriable_status,
    parse_retry_after,
    send_with_retry,
)


def test_full_jitter_bounds() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(1)
    for attempt in range(1, 10):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        samples = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # really spread over the range


def test_retry_after_is_a_minimum_and_capped() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.1, max_delay_s=1.0, max_retry_after_s=60)
    rng = random.Random(0)
    assert policy.delay(1, 7.0, rng) == 7.0
    assert policy.delay(1, 61.0, rng) is None  # would wait too long: give up and report
    assert policy.delay(5, None, rng) is None  # attempts exhausted


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1000.0 + 30, usegmt=True)
    assert parse_retry_after(date, now=1000.0) == pytest.approx(30.0)


def test_what_is_retriable() -> None:
    assert {s for s in range(400, 600) if is_retriable_status(s)} == {408, 429, 500, 502, 503, 504}
    assert {s for s in range(400, 600) if is_retriable_status(s, idempotent=False)} == {429, 503}
    req = httpx.Request("GET", "https://x/")
    assert is_retriable_exception(httpx.ReadTimeout("t", request=req))
    assert is_retriable_exception(httpx.RemoteProtocolError("dropped", request=req))
    assert not is_retriable_exception(httpx.ReadTimeout("t", request=req), idempotent=False)
    assert is_retriable_exception(httpx.ConnectError("c", request=req), idempotent=False)
    assert not is_retriable_exception(ValueError())


async def test_send_with_retry_sleeps_and_stops() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    answers = [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(500), httpx.Response(200)]
    request = httpx.Request("GET", "https://x/")

    async def send() -> httpx.Response:
        r = answers.pop(0)
        r.request = request
        return r

    throttles: list[float | None] = []
    response = await send_with_retry(
        send, RetryPolicy(base_delay_s=0.01), sleep=sleep, on_throttled=throttles.append
    )
    assert response.status_code == 200
    assert slept[0] >= 2.0 and slept[1] <= 0.02 and throttles == [2.0]


async def test_non_retriable_answer_returned_at_once() -> None:
    calls = 0

    async def send() -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(404, request=httpx.Request("GET", "https://x/"))

    assert (await send_with_retry(send, RetryPolicy())).status_code == 404
    assert calls == 1
